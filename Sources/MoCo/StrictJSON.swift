/// A strict RFC 8259 JSON validator that screens request bodies (job specs) before
/// `JSONSerialization` sees them.
///
/// `JSONSerialization` is lenient where a job spec must not be: it accepts trailing commas,
/// silently keeps the last of duplicate keys, and recurses once per nesting level. `StrictJSON`
/// accepts exactly the RFC 8259 grammar over valid UTF-8 and reports the first problem with its
/// position and the dotted path of the member it occurred in, so the daemon can return it as a
/// field error.
///
/// The scanner is a single pass with an explicit stack (its depth bounded by `Limits.maxDepth`,
/// never by the input), so it runs in linear time and cannot overflow the call stack.
public enum StrictJSON {
    /// Size limits applied while validating; exceeding one is a `Violation`.
    public struct Limits: Sendable {
        /// The largest accepted body, in bytes.
        public var maxBytes = 1 << 20
        /// The deepest accepted nesting of objects and arrays (the top-level container is level 1).
        public var maxDepth = 64
        /// The longest accepted string (keys included), counted in encoded bytes between the quotes.
        public var maxStringBytes = 64 << 10
        /// The most members of one object or elements of one array.
        public var maxMembers = 10_000
        /// The default limits.
        public init() {}
    }

    /// The first problem found in a body.
    public struct Violation: Error, Sendable, Equatable, CustomStringConvertible {
        /// The 0-based byte offset of the problem.
        public var offset: Int
        /// The 1-based line of `offset` (lines end at LF).
        public var line: Int
        /// The 1-based column of `offset`, counted in Unicode scalars.
        public var column: Int
        /// What is wrong, in words a user can act on.
        public var problem: String
        /// The member the problem is in: keys joined by `.`, array indices as `[i]`
        /// (e.g. `moco.bn_splits`, `layers[2].name`, `$[0]`), or `$` for the top level.
        public var path: String

        /// Creates a violation.
        public init(offset: Int, line: Int, column: Int, problem: String, path: String) {
            self.offset = offset; self.line = line; self.column = column; self.problem = problem; self.path = path
        }

        /// `path: problem (line L, column C)`.
        public var description: String { "\(path): \(problem) (line \(line), column \(column))" }
    }

    /// Throws the first violation, or returns normally when the bytes are one strict JSON value.
    ///
    /// Strict means RFC 8259 exactly, plus: no byte order mark, no duplicate keys in one object
    /// (compared as decoded strings), no number whose magnitude overflows `Double`, and the
    /// `limits`. Any value is accepted at the top level, not only objects and arrays.
    public static func validate(_ bytes: some Collection<UInt8>, limits: Limits = Limits()) throws(Violation) {
        let contiguous: Result<Void, Violation>? = bytes.withContiguousStorageIfAvailable { buffer in
            Result { () throws(Violation) in try validate(buffer: buffer, limits: limits) }
        }
        if let contiguous { return try contiguous.get() }
        // Copy at most one byte past the limit: enough to report an oversized body.
        let cap = max(0, limits.maxBytes)
        let copy = Array(bytes.prefix(cap == Int.max ? cap : cap + 1))
        let result: Result<Void, Violation> = copy.withUnsafeBufferPointer { buffer in
            Result { () throws(Violation) in try validate(buffer: buffer, limits: limits) }
        }
        try result.get()
    }

    static func validate(buffer: UnsafeBufferPointer<UInt8>, limits: Limits) throws(Violation) {
        var scanner = StrictJSONScanner(bytes: buffer, limits: limits)
        try scanner.run()
    }
}

/// The scanner behind `StrictJSON.validate`: a state machine over the bytes with an explicit
/// stack of open containers.
struct StrictJSONScanner {
    typealias Violation = StrictJSON.Violation

    /// One open object or array.
    struct Frame {
        var isObject: Bool
        /// Members (object) or elements (array) begun so far.
        var count = 0
        /// The member now being read: its key, or its index, or none between members.
        var label = Label.none
        /// Decoded keys seen so far (objects only).
        var keys: Set<String> = []
    }

    enum Label { case none, key(String), index(Int) }

    enum State {
        /// A value must come next (top level, after ':' or after ',' in an array).
        case value
        /// Just after '[': a value or ']'.
        case valueOrClose
        /// Just after '{': a key or '}'.
        case keyOrClose
        /// After ',' in an object: a key.
        case key
        /// A value just ended.
        case afterValue
    }

    let b: UnsafeBufferPointer<UInt8>
    let n: Int
    let limits: StrictJSON.Limits
    var i = 0
    var stack: [Frame] = []
    /// Offset of the last ',' read, for trailing-comma reports.
    var lastComma = 0
    /// Decoded bytes of the key being read.
    var scratch: [UInt8] = []

    init(bytes: UnsafeBufferPointer<UInt8>, limits: StrictJSON.Limits) {
        b = bytes
        n = bytes.count
        self.limits = limits
    }

    // MARK: Driver

    mutating func run() throws(Violation) {
        let maxBytes = max(0, limits.maxBytes)
        if n > maxBytes { throw fail("body larger than \(maxBytes) bytes", at: maxBytes) }
        if n == 0 { throw fail("empty body", at: 0) }
        if n >= 3 && b[0] == 0xEF && b[1] == 0xBB && b[2] == 0xBF {
            throw fail("a UTF-8 byte order mark (BOM) is not allowed at the start of JSON", at: 0)
        }
        if n >= 2 && ((b[0] == 0xFE && b[1] == 0xFF) || (b[0] == 0xFF && b[1] == 0xFE)) {
            throw fail("the body starts with a UTF-16 byte order mark; JSON must be UTF-8", at: 0)
        }
        skipWhitespace()
        if i == n { throw fail("empty body: only whitespace, expected a JSON value", at: i) }

        var state = State.value
        while true {
            switch state {
            case .value, .valueOrClose:
                skipWhitespace()
                guard i < n else { throw fail(endOfInput(expecting: "a value"), at: i) }
                let c = b[i]
                if c == UInt8(ascii: "]"), state == .valueOrClose {
                    i += 1
                    _ = stack.popLast()
                    state = .afterValue
                    continue
                }
                if let top = stack.last {
                    if !top.isObject {
                        if c == UInt8(ascii: "]") { throw fail("trailing comma before ']'", at: lastComma) }
                        try beginElement()
                    } else if c == UInt8(ascii: "}") || c == UInt8(ascii: ",") {
                        throw fail("expected a value after ':', found \(describe(at: i))", at: i)
                    }
                }
                try scanValue(&state)
            case .keyOrClose, .key:
                skipWhitespace()
                guard i < n else { throw fail(endOfInput(expecting: "a key"), at: i) }
                let c = b[i]
                if c == UInt8(ascii: "}") {
                    if state == .key { throw fail("trailing comma before '}'", at: lastComma) }
                    i += 1
                    _ = stack.popLast()
                    state = .afterValue
                    continue
                }
                try scanKey()
                state = .value
            case .afterValue:
                skipWhitespace()
                guard let top = stack.last else {
                    if i == n { return }
                    try checkUTF8(at: i)
                    let comment = b[i] == UInt8(ascii: "/") || b[i] == UInt8(ascii: "#") ? " (comments are not allowed in JSON)" : ""
                    throw fail("trailing data after the JSON value: \(describe(at: i))\(comment)", at: i)
                }
                guard i < n else { throw fail(endOfInput(expecting: top.isObject ? "',' or '}'" : "',' or ']'"), at: i) }
                let c = b[i]
                if c == UInt8(ascii: ",") {
                    lastComma = i
                    i += 1
                    stack[stack.count - 1].label = .none
                    state = top.isObject ? .key : .value
                } else if c == UInt8(ascii: top.isObject ? "}" : "]") {
                    i += 1
                    _ = stack.popLast()
                } else if c == UInt8(ascii: "/") || c == UInt8(ascii: "#") {
                    throw fail("comments are not allowed in JSON", at: i)
                } else if startsValue(c) {
                    throw fail(top.isObject ? "missing ',' between object members" : "missing ',' between array elements", at: i)
                } else {
                    try checkUTF8(at: i)
                    let after = top.isObject ? "an object member" : "an array element"
                    throw fail("expected ',' or '\(top.isObject ? "}" : "]")' after \(after), found \(describe(at: i))", at: i)
                }
            }
        }
    }

    /// Reads one value starting at `b[i]` (not whitespace, in bounds). Containers are pushed,
    /// not recursed into.
    mutating func scanValue(_ state: inout State) throws(Violation) {
        let c = b[i]
        switch c {
        case UInt8(ascii: "{"):
            try push(isObject: true)
            state = .keyOrClose
        case UInt8(ascii: "["):
            try push(isObject: false)
            state = .valueOrClose
        case UInt8(ascii: "\""):
            try scanString(decode: false)
            state = .afterValue
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            try scanNumber()
            state = .afterValue
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"):
            try scanLiteral()
            state = .afterValue
        case UInt8(ascii: "+"):
            throw fail("a number cannot start with '+'", at: i)
        case UInt8(ascii: "."):
            throw fail("a number must start with a digit ('.5' is not JSON; write 0.5)", at: i)
        case UInt8(ascii: "'"):
            throw fail("single quotes are not JSON; strings must be in double quotes", at: i)
        case UInt8(ascii: "/"), UInt8(ascii: "#"):
            throw fail("comments are not allowed in JSON", at: i)
        default:
            try checkUTF8(at: i)
            throw fail("unexpected character \(describe(at: i)), expected a value", at: i)
        }
    }

    mutating func push(isObject: Bool) throws(Violation) {
        if stack.count >= max(0, limits.maxDepth) {
            throw fail("nesting deeper than \(max(0, limits.maxDepth)) levels", at: i)
        }
        stack.append(Frame(isObject: isObject))
        i += 1
    }

    /// Counts a new array element and labels it with its index.
    mutating func beginElement() throws(Violation) {
        let top = stack.count - 1
        let index = stack[top].count
        if index >= limits.maxMembers {
            throw fail("more than \(limits.maxMembers) elements in one array", at: i)
        }
        stack[top].count = index &+ 1
        stack[top].label = .index(index)
    }

    /// Reads `"key"` and the `:` after it; `b[i]` is not whitespace and not '}'.
    mutating func scanKey() throws(Violation) {
        let c = b[i]
        guard c == UInt8(ascii: "\"") else {
            if c == UInt8(ascii: "'") {
                throw fail("single quotes are not JSON; keys must be in double quotes", at: i)
            }
            if c == UInt8(ascii: "/") || c == UInt8(ascii: "#") { throw fail("comments are not allowed in JSON", at: i) }
            if isWordByte(c) {
                throw fail("object keys must be double-quoted strings; found unquoted \(quoted(word(at: i)))", at: i)
            }
            try checkUTF8(at: i)
            throw fail("expected a double-quoted key, found \(describe(at: i))", at: i)
        }
        let top = stack.count - 1
        if stack[top].count >= limits.maxMembers {
            throw fail("more than \(limits.maxMembers) members in one object", at: i)
        }
        let keyStart = i
        let key = try scanString(decode: true) ?? ""
        stack[top].count &+= 1
        stack[top].label = .key(key)
        if !stack[top].keys.insert(key).inserted {
            throw fail("duplicate key \(quoted(key))", at: keyStart)
        }
        skipWhitespace()
        guard i < n else { throw fail(endOfInput(expecting: "':'"), at: i) }
        guard b[i] == UInt8(ascii: ":") else {
            try checkUTF8(at: i)
            throw fail("expected ':' after the key \(quoted(key)), found \(describe(at: i))", at: i)
        }
        i += 1
    }

    // MARK: Strings

    /// Reads a string starting at the opening quote. Returns its decoded value when `decode`.
    @discardableResult
    mutating func scanString(decode: Bool) throws(Violation) -> String? {
        let start = i
        let limit = limits.maxStringBytes
        if decode { scratch.removeAll(keepingCapacity: true) }
        i += 1
        while true {
            if i - start - 1 > limit { throw fail("string longer than \(limit) bytes", at: start) }
            guard i < n else { throw fail("unterminated string (missing closing '\"')", at: start) }
            let c = b[i]
            if c == UInt8(ascii: "\"") {
                i += 1
                return decode ? String(decoding: scratch, as: UTF8.self) : nil
            } else if c == UInt8(ascii: "\\") {
                try scanEscape(decode: decode, stringStart: start)
            } else if c < 0x20 {
                throw fail("control character \(scalarName(UInt32(c))) in a string must be escaped\(escapeHint(c))", at: i)
            } else if c < 0x80 {
                if decode { scratch.append(c) }
                i += 1
            } else {
                let length = try utf8Sequence(at: i)
                if decode { scratch.append(contentsOf: UnsafeBufferPointer(rebasing: b[i..<(i + length)])) }
                i += length
            }
        }
    }

    /// Reads one escape sequence at `b[i] == '\\'`.
    mutating func scanEscape(decode: Bool, stringStart: Int) throws(Violation) {
        guard i + 1 < n else { throw fail("unterminated string (missing closing '\"')", at: stringStart) }
        let e = b[i + 1]
        var decoded: UInt8
        switch e {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): decoded = e
        case UInt8(ascii: "b"): decoded = 0x08
        case UInt8(ascii: "f"): decoded = 0x0C
        case UInt8(ascii: "n"): decoded = 0x0A
        case UInt8(ascii: "r"): decoded = 0x0D
        case UInt8(ascii: "t"): decoded = 0x09
        case UInt8(ascii: "u"):
            let unit = try hex4(escapeAt: i)
            var scalar = unit
            if (0xD800...0xDBFF).contains(unit) {
                let next = i + 6
                guard next + 1 < n, b[next] == UInt8(ascii: "\\"), b[next + 1] == UInt8(ascii: "u") else {
                    throw fail("lone surrogate \(escapeText(unit)): a high surrogate must be followed by a \\udc00-\\udfff low surrogate", at: i)
                }
                let low = try hex4(escapeAt: next)
                guard (0xDC00...0xDFFF).contains(low) else {
                    throw fail("lone surrogate \(escapeText(unit)): it is followed by \(escapeText(low)), not a \\udc00-\\udfff low surrogate", at: i)
                }
                scalar = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                i += 12
            } else if (0xDC00...0xDFFF).contains(unit) {
                throw fail("lone surrogate \(escapeText(unit)): a low surrogate must follow a high surrogate", at: i)
            } else {
                i += 6
            }
            if decode { appendUTF8(scalar) }
            return
        default:
            try checkUTF8(at: i + 1)
            throw fail("invalid escape '\\\(printable(at: i + 1))' in a string; only \\\" \\\\ \\/ \\b \\f \\n \\r \\t and \\uXXXX are allowed", at: i)
        }
        if decode { scratch.append(decoded) }
        i += 2
    }

    /// Appends the UTF-8 form of a scalar value (not a surrogate, at most 0x10FFFF) to `scratch`.
    mutating func appendUTF8(_ v: UInt32) {
        switch v {
        case 0..<0x80:
            scratch.append(UInt8(truncatingIfNeeded: v))
        case 0x80..<0x800:
            scratch.append(UInt8(truncatingIfNeeded: 0xC0 | v >> 6))
            scratch.append(UInt8(truncatingIfNeeded: 0x80 | v & 0x3F))
        case 0x800..<0x10000:
            scratch.append(UInt8(truncatingIfNeeded: 0xE0 | v >> 12))
            scratch.append(UInt8(truncatingIfNeeded: 0x80 | v >> 6 & 0x3F))
            scratch.append(UInt8(truncatingIfNeeded: 0x80 | v & 0x3F))
        default:
            scratch.append(UInt8(truncatingIfNeeded: 0xF0 | v >> 18))
            scratch.append(UInt8(truncatingIfNeeded: 0x80 | v >> 12 & 0x3F))
            scratch.append(UInt8(truncatingIfNeeded: 0x80 | v >> 6 & 0x3F))
            scratch.append(UInt8(truncatingIfNeeded: 0x80 | v & 0x3F))
        }
    }

    /// The code unit of `\uXXXX` at `b[at]`.
    func hex4(escapeAt at: Int) throws(Violation) -> UInt32 {
        var value: UInt32 = 0
        for k in 0..<4 {
            let j = at + 2 + k
            guard j < n, let digit = hexValue(b[j]) else {
                throw fail("\\u must be followed by four hex digits", at: at)
            }
            value = value << 4 | digit
        }
        return value
    }

    /// The length of the valid UTF-8 sequence that starts at `b[at]` (a byte >= 0x80), or the
    /// violation that says why it is not one.
    func utf8Sequence(at: Int) throws(Violation) -> Int {
        let lead = b[at]
        let length: Int
        var low: UInt8 = 0x80, high: UInt8 = 0xBF   // the range of the second byte
        switch lead {
        case 0x80...0xBF: throw badUTF8(at, "unexpected continuation byte 0x\(hex(lead))")
        case 0xC0, 0xC1: throw badUTF8(at, "overlong encoding")
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; low = 0xA0
        case 0xED: length = 3; high = 0x9F
        case 0xE1...0xEF: length = 3
        case 0xF0: length = 4; low = 0x90
        case 0xF1...0xF3: length = 4
        case 0xF4: length = 4; high = 0x8F
        default: throw badUTF8(at, "byte 0x\(hex(lead)) never appears in UTF-8")
        }
        guard at + 1 < n, (0x80...0xBF).contains(b[at + 1]) else { throw badUTF8(at, "truncated multi-byte sequence") }
        let second = b[at + 1]
        if second < low { throw badUTF8(at, "overlong encoding") }
        if second > high {
            throw badUTF8(at, lead == 0xED ? "UTF-16 surrogate encoded in UTF-8" : "code point above U+10FFFF")
        }
        for k in 2..<length {
            guard at + k < n, (0x80...0xBF).contains(b[at + k]) else { throw badUTF8(at, "truncated multi-byte sequence") }
        }
        return length
    }

    /// Throws the UTF-8 violation when the byte at `at` starts an invalid sequence, so that a
    /// message about an unexpected character never hides invalid UTF-8.
    func checkUTF8(at: Int) throws(Violation) {
        if at < n, b[at] >= 0x80 { _ = try utf8Sequence(at: at) }
    }

    func badUTF8(_ at: Int, _ why: String) -> Violation { fail("invalid UTF-8 at byte \(at): \(why)", at: at) }

    // MARK: Numbers and literals

    /// Reads `-? int frac? exp?` and checks that it is finite as a `Double`.
    mutating func scanNumber() throws(Violation) {
        let start = i
        if b[i] == UInt8(ascii: "-") {
            i += 1
            if i < n, isLetter(b[i]) {
                let w = word(at: i).lowercased()
                if w == "infinity" || w == "inf" { throw fail("-Infinity is not JSON; numbers must be finite", at: start) }
                if w == "nan" { throw fail("NaN is not JSON; numbers must be finite", at: start) }
            }
            guard i < n, isDigit(b[i]) else { throw fail("expected a digit after '-'", at: i) }
        }
        let intStart = i
        if b[i] == UInt8(ascii: "0") {
            i += 1
            if i < n, isDigit(b[i]) { throw fail("leading zeros are not allowed", at: intStart) }
        } else {
            while i < n, isDigit(b[i]) { i += 1 }
        }
        let intDigits = i - intStart
        let intIsZero = b[intStart] == UInt8(ascii: "0")
        var firstNonZeroFraction = 0   // 1-based position of the first nonzero fraction digit; 0 = none
        if i < n, b[i] == UInt8(ascii: ".") {
            i += 1
            guard i < n, isDigit(b[i]) else {
                throw fail("a '.' in a number must be followed by a digit ('1.' is not JSON; write 1.0)", at: i)
            }
            let fractionStart = i
            while i < n, isDigit(b[i]) {
                if firstNonZeroFraction == 0, b[i] != UInt8(ascii: "0") { firstNonZeroFraction = i - fractionStart + 1 }
                i += 1
            }
        }
        var exponent = 0
        if i < n, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
            i += 1
            var negative = false
            if i < n, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") {
                negative = b[i] == UInt8(ascii: "-")
                i += 1
            }
            guard i < n, isDigit(b[i]) else { throw fail("expected a digit in the exponent", at: i) }
            while i < n, isDigit(b[i]) {
                if exponent < 1_000_000_000 { exponent = exponent * 10 + Int(b[i] &- UInt8(ascii: "0")) }   // saturates
                i += 1
            }
            if negative { exponent = -exponent }
        }
        if i < n, isWordByte(b[i]) || b[i] == UInt8(ascii: ".") {
            if intIsZero, intDigits == 1, i == intStart + 1, b[i] == UInt8(ascii: "x") || b[i] == UInt8(ascii: "X") {
                throw fail("hexadecimal numbers are not JSON; write the number in decimal", at: start)
            }
            throw fail("unexpected character \(describe(at: i)) after a number", at: i)
        }
        // The decimal exponent of the leading significant digit decides the range; only the
        // 1e308 decade needs an exact conversion. Underflow to zero is accepted (as Foundation does).
        if intIsZero && firstNonZeroFraction == 0 { return }   // zero, whatever the exponent
        let magnitude = intIsZero ? exponent - firstNonZeroFraction : exponent + intDigits - 1
        if magnitude < 308 { return }
        if magnitude == 308 {
            let text = String(decoding: UnsafeBufferPointer(rebasing: b[start..<i]), as: UTF8.self)
            if let value = Double(text), value.isFinite { return }
        }
        throw fail("number out of range: its magnitude exceeds the largest Double (about 1.8e308)", at: start)
    }

    /// Reads `true`, `false` or `null`, or explains what the word is instead.
    mutating func scanLiteral() throws(Violation) {
        let w = word(at: i)
        switch w {
        case "true", "false", "null":
            i += w.utf8.count
            return
        default: break
        }
        let lower = w.lowercased()
        switch lower {
        case "nan": throw fail("NaN is not JSON; numbers must be finite", at: i)
        case "infinity", "inf": throw fail("Infinity is not JSON; numbers must be finite", at: i)
        case "true", "false", "null": throw fail("\(quoted(w)) is not JSON; literals are lowercase: \(lower)", at: i)
        case "none", "nil", "undefined": throw fail("\(quoted(w)) is not JSON; use null", at: i)
        default: break
        }
        if let first = w.utf8.first, first == UInt8(ascii: "t") || first == UInt8(ascii: "f") || first == UInt8(ascii: "n") {
            throw fail("invalid literal \(quoted(w)); expected true, false or null", at: i)
        }
        throw fail("unexpected character \(describe(at: i)); strings must be in double quotes", at: i)
    }

    // MARK: Helpers

    mutating func skipWhitespace() {
        while i < n {
            switch b[i] {
            case 0x20, 0x09, 0x0A, 0x0D: i += 1
            default: return
            }
        }
    }

    func isDigit(_ c: UInt8) -> Bool { c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") }
    func isLetter(_ c: UInt8) -> Bool { (c | 0x20) >= UInt8(ascii: "a") && (c | 0x20) <= UInt8(ascii: "z") }
    func isWordByte(_ c: UInt8) -> Bool { isLetter(c) || isDigit(c) || c == UInt8(ascii: "_") }

    func startsValue(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "\""), UInt8(ascii: "{"), UInt8(ascii: "["), UInt8(ascii: "-"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "t"), UInt8(ascii: "f"), UInt8(ascii: "n"):
            return true
        default:
            return false
        }
    }

    func hexValue(_ c: UInt8) -> UInt32? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt32(c &- UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return UInt32(c &- UInt8(ascii: "a") &+ 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return UInt32(c &- UInt8(ascii: "A") &+ 10)
        default: return nil
        }
    }

    /// The run of ASCII letters, digits and '_' at `at`, at most 32 of them.
    func word(at: Int) -> String {
        var end = at
        while end < n, end - at < 32, isWordByte(b[end]) { end += 1 }
        return String(decoding: UnsafeBufferPointer(rebasing: b[at..<end]), as: UTF8.self)
    }

    func hex(_ c: UInt8) -> String {
        let digits = Array("0123456789ABCDEF".utf8)
        return String(decoding: [digits[Int(c >> 4)], digits[Int(c & 15)]], as: UTF8.self)
    }

    func scalarName(_ v: UInt32) -> String {
        var s = String(v, radix: 16, uppercase: true)
        while s.utf8.count < 4 { s = "0" + s }
        return "U+" + s
    }

    func escapeText(_ unit: UInt32) -> String {
        var s = String(unit, radix: 16)
        while s.utf8.count < 4 { s = "0" + s }
        return "\\u" + s
    }

    func escapeHint(_ c: UInt8) -> String {
        switch c {
        case 0x09: return " (write \\t)"
        case 0x0A: return " (write \\n)"
        case 0x0D: return " (write \\r)"
        case 0x08: return " (write \\b)"
        case 0x0C: return " (write \\f)"
        default: return " (write \\u00\(hex(c).lowercased()))"
        }
    }

    /// A string for a message: in double quotes, escaped, at most 64 characters.
    func quoted(_ s: String) -> String {
        var out = "\""
        var count = 0
        for scalar in s.unicodeScalars {
            if count == 64 { out += "…"; break }
            count += 1
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F: out += escapeText(scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// The character at `at` for an escape message: itself when printable ASCII, else `U+XXXX`.
    func printable(at: Int) -> String {
        let c = b[at]
        if c > 0x20 && c < 0x7F { return String(UnicodeScalar(c)) }
        return describe(at: at)
    }

    /// The character at `at` for a message: `'x'` for printable ASCII, `U+XXXX` otherwise,
    /// with a hint for look-alike whitespace; "end of input" past the end.
    func describe(at: Int) -> String {
        guard at < n else { return "end of input" }
        let c = b[at]
        if c > 0x20 && c < 0x7F { return "'\(String(UnicodeScalar(c)))'" }
        var value = UInt32(c)
        if c >= 0x80 {
            guard let length = try? utf8Sequence(at: at) else {
                return "invalid UTF-8 (byte 0x\(hex(c)))"
            }
            value = UInt32(c) & (length == 2 ? 0x1F : length == 3 ? 0x0F : 0x07)
            for k in 1..<length { value = value << 6 | UInt32(b[at + k] & 0x3F) }
        }
        var text = scalarName(value)
        if let scalar = Unicode.Scalar(value), value >= 0xA0, !scalar.properties.isWhitespace, value != 0xFEFF {
            text += " '\(Character(scalar))'"
        }
        switch value {
        case 0x0B, 0x0C, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000, 0xFEFF:
            text += " (only space, tab, CR and LF are whitespace in JSON)"
        default: break
        }
        return text
    }

    func endOfInput(expecting what: String) -> String {
        var message = "unexpected end of input, expected \(what)"
        if let top = stack.last { message += top.isObject ? " (an object is not closed with '}')" : " (an array is not closed with ']')" }
        return message
    }

    /// The violation at `offset`, with its line, column and member path.
    func fail(_ problem: String, at offset: Int) -> Violation {
        let end = min(max(offset, 0), n)
        var line = 1, column = 1
        for j in 0..<end {
            let c = b[j]
            if c == 0x0A {
                line &+= 1
                column = 1
            } else if c & 0xC0 != 0x80 {
                column &+= 1
            }
        }
        var path = ""
        for frame in stack {
            switch frame.label {
            case .none: break
            case .key(let key): path += path.isEmpty ? key : "." + key
            case .index(let index): path += (path.isEmpty ? "$" : "") + "[\(index)]"
            }
        }
        return Violation(offset: offset, line: line, column: column, problem: problem, path: path.isEmpty ? "$" : path)
    }
}
