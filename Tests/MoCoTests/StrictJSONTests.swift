import Foundation
@testable import MoCo
import Testing

@Suite struct StrictJSONTests {
    /// One invalid body and a substring its `problem` must contain.
    struct Case: Sendable, CustomTestStringConvertible {
        let name: String
        let bytes: [UInt8]
        let expected: String

        init(_ name: String, _ text: String, _ expected: String) {
            self.init(name, Array(text.utf8), expected)
        }

        init(_ name: String, _ bytes: [UInt8], _ expected: String) {
            self.name = name; self.bytes = bytes; self.expected = expected
        }

        var testDescription: String { name }
    }

    /// One valid body, shown abbreviated in test output.
    struct Doc: Sendable, CustomTestStringConvertible {
        let text: String
        var testDescription: String { text.utf8.count > 80 ? "\(text.prefix(60))… (\(text.utf8.count) bytes)" : text }
    }

    /// A deterministic generator for the fuzz test (SplitMix64).
    struct SplitMix64: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static let valid: [Doc] = [String]([
        "{}",
        "[]",
        " \t\r\n{ \t\r\n} \t\r\n",
        "0",
        "-0",
        "-0.0",
        "0.5e-3",
        "1e308",
        "-1.7976931348623157e308",
        "1E+2",
        "2.5E-10",
        "1e-400",
        "123456789012345678901234567890",
        #""""#,
        "true",
        "null",
        #"[true, false, null, 0, -1, 3.25, "x", {}, []]"#,
        #"{"a": {"b": {"c": [1, [2, [3, {"d": null}]]]}}}"#,
        #"{"esc": "\" \\ \/ \b \f \n \r \t \u0000 \u001f \u00e9 \uFFFF"}"#,
        #"{"pair": "\ud83d\ude00", "upper": "\uD834\uDD1E"}"#,
        #"{"utf8": "héllo wörld 日本語 😀", "é": 1}"#,
        #"{"a": 1, "A": 2, "a ": 3, "\u0062": 4}"#,
        #"{"name": "fmnist-v2", "data": {"format": "npy", "path": "x.npy", "limit": 10}, "moco": {"queue": 4096, "momentum": 0.999, "temperature": 0.2, "bn_splits": 8}, "optim": {"lr": 0.03, "epochs": 200}}"#,
        "[" + String(repeating: "[", count: 63) + String(repeating: "]", count: 64),
        "[" + Array(repeating: "1", count: 10_000).joined(separator: ",") + "]",
        #"{"s": ""# + String(repeating: "a", count: 64 << 10) + #""}"#,
    ]).map(Doc.init)

    static let deepArrays = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
    static let deepObjects = String(repeating: #"{"a":"#, count: 10_000) + "1" + String(repeating: "}", count: 10_000)

    static let invalid: [Case] = [
        .init("trailing comma in object", #"{"a": 1,}"#, "trailing comma before '}'"),
        .init("trailing comma in array", "[1, 2,]", "trailing comma before ']'"),
        .init("NaN", #"{"lr": NaN}"#, "NaN is not JSON; numbers must be finite"),
        .init("Infinity", "[Infinity]", "Infinity is not JSON; numbers must be finite"),
        .init("-Infinity", "-Infinity", "-Infinity is not JSON; numbers must be finite"),
        .init("duplicate key", #"{"lr": 1, "lr": 2}"#, #"duplicate key "lr""#),
        .init("escaped duplicate key", #"{"a": 1, "\u0061": 2}"#, #"duplicate key "a""#),
        .init("canonically equal keys", "{\"\u{E9}\": 1, \"e\u{301}\": 2}", "duplicate key"),
        .init("10,000-deep arrays", deepArrays, "nesting deeper than 64 levels"),
        .init("10,000-deep objects", deepObjects, "nesting deeper than 64 levels"),
        .init("65 levels", String(repeating: "[", count: 65) + String(repeating: "]", count: 65), "nesting deeper than 64 levels"),
        .init("1 MiB + 1 body", "\"" + String(repeating: "a", count: (1 << 20) - 1) + "\"", "body larger than 1048576 bytes"),
        .init("long string", "\"" + String(repeating: "a", count: (64 << 10) + 1) + "\"", "string longer than 65536 bytes"),
        .init("NUL byte in string", [0x22, 0x61, 0x00, 0x22], "control character U+0000 in a string must be escaped"),
        .init("raw U+0001", [0x22, 0x01, 0x22], "control character U+0001 in a string must be escaped"),
        .init("raw newline in string", "\"a\nb\"", "control character U+000A"),
        .init("invalid UTF-8 0xFF", [0x22, 0xFF, 0x22], "invalid UTF-8 at byte 1"),
        .init("overlong slash", [0x22, 0xC0, 0xAF, 0x22], "invalid UTF-8 at byte 1: overlong"),
        .init("overlong 3-byte", [0x22, 0xE0, 0x80, 0xAF, 0x22], "overlong"),
        .init("surrogate in UTF-8", [0x22, 0xED, 0xA0, 0x80, 0x22], "surrogate encoded in UTF-8"),
        .init("above U+10FFFF", [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22], "above U+10FFFF"),
        .init("truncated sequence", [0x22, 0xE2, 0x82, 0x22], "truncated"),
        .init("lone continuation byte", [0x7B, 0x22, 0x61, 0x80, 0x22, 0x3A, 0x31, 0x7D], "invalid UTF-8 at byte 3"),
        .init("bad UTF-8 outside a string", [0x5B, 0xC3, 0x5D], "invalid UTF-8 at byte 1"),
        .init("BOM", [0xEF, 0xBB, 0xBF, 0x7B, 0x7D], "byte order mark"),
        .init("leading zeros", "[01]", "leading zeros are not allowed"),
        .init("negative leading zeros", "-007", "leading zeros are not allowed"),
        .init("plus sign", "+1", "cannot start with '+'"),
        .init(".5", "[.5]", "must start with a digit"),
        .init("1.", "1.", "'.' in a number must be followed by a digit"),
        .init("1.e5", "1.e5", "'.' in a number must be followed by a digit"),
        .init("bare exponent", "1e", "expected a digit in the exponent"),
        .init("hex", "0x1F", "hexadecimal numbers are not JSON"),
        .init("out of range", "1e400", "number out of range"),
        .init("out of range negative", "[-2e308]", "number out of range"),
        .init("single quotes", "{'a': 1}", "single quotes"),
        .init("single-quoted value", #"{"a": 'b'}"#, "single quotes"),
        .init("line comment", "{\"a\": 1 // lr\n}", "comments are not allowed"),
        .init("block comment", "/* spec */ {}", "comments are not allowed"),
        .init("unquoted key", "{a: 1}", "object keys must be double-quoted"),
        .init("trailing garbage", "{} x", "trailing data after the JSON value"),
        .init("two values", "1 2", "trailing data after the JSON value"),
        .init("empty", "", "empty body"),
        .init("only whitespace", " \n ", "empty body"),
        .init("lone high surrogate", #""\ud800""#, #"lone surrogate \ud800"#),
        .init("lone low surrogate", #""\udc00x""#, #"lone surrogate \udc00"#),
        .init("high then non-low", #""\ud800\u0041""#, #"lone surrogate \ud800"#),
        .init("invalid escape", #""\x41""#, "invalid escape '\\x'"),
        .init("short \\u", #""\u12""#, "four hex digits"),
        .init("unterminated string", #"{"a": "b"#, "unterminated string"),
        .init("unclosed array", "[1, 2", "unexpected end of input"),
        .init("missing comma", #"{"a": 1 "b": 2}"#, "missing ','"),
        .init("missing colon", #"{"a" 1}"#, "expected ':'"),
        .init("capitalised literal", "True", "literals are lowercase"),
        .init("misspelt literal", "nul", "invalid literal"),
        .init("stray character", "@", "unexpected character '@'"),
        .init("form feed whitespace", "[1,\u{0C}2]", "only space, tab, CR and LF"),
        .init("no-break space", "[1,\u{A0}2]", "only space, tab, CR and LF"),
    ]

    @Test(arguments: valid)
    func acceptsValidDocument(_ doc: Doc) throws {
        try StrictJSON.validate(Array(doc.text.utf8))
        // Foundation agrees.
        _ = try JSONSerialization.jsonObject(with: Data(doc.text.utf8), options: [.fragmentsAllowed])
    }

    @Test(arguments: invalid)
    func rejectsInvalidDocument(_ c: Case) {
        do {
            try StrictJSON.validate(c.bytes)
            Issue.record("accepted \(c.name)")
        } catch {
            #expect(error.problem.contains(c.expected), "\(error)")
            #expect(error.offset >= 0 && error.offset <= c.bytes.count && error.line >= 1 && error.column >= 1)
        }
    }

    /// The same verdict from every kind of collection: Array, Data, a UTF-8 view, a non-contiguous one.
    @Test func acceptsAnyByteCollection() throws {
        let text = #"{"a": [1, 2.5, "x"]}"#
        try StrictJSON.validate(Data(text.utf8))
        try StrictJSON.validate(text.utf8)
        try StrictJSON.validate(Array(text.utf8).lazy.map { $0 })
        #expect(throws: StrictJSON.Violation.self) { try StrictJSON.validate(Array("[1,]".utf8).lazy.map { $0 }) }
        let big = Array(repeating: UInt8(ascii: " "), count: (1 << 20) + 5).lazy.map { $0 }
        let error = #expect(throws: StrictJSON.Violation.self) { try StrictJSON.validate(big) }
        #expect(error?.problem == "body larger than 1048576 bytes" && error?.offset == 1 << 20)
    }

    func violation(_ text: String, limits: StrictJSON.Limits = .init()) -> StrictJSON.Violation? {
        do {
            try StrictJSON.validate(Array(text.utf8), limits: limits)
            return nil
        } catch {
            return error
        }
    }

    @Test func pathNamesTheMember() {
        #expect(violation(#"{"moco": {"queue": 1, "bn_splits": NaN}}"#)?.path == "moco.bn_splits")
        #expect(violation(#"{"optim": {"lr": 1, "lr": 2}}"#)?.path == "optim.lr")
        #expect(violation(#"{"a": 1,}"#)?.path == "$")
        #expect(violation(#"{"a": [1, 2, {"b": 01}]}"#)?.path == "a[2].b")
        #expect(violation("[0, [1, +1]]")?.path == "$[1][1]")
        #expect(violation("01")?.path == "$")
        #expect(violation(#"{"x": {"y": 1,}}"#)?.path == "x")
        #expect(violation(#"{"x": {"y": 1 "z": 2}}"#)?.path == "x.y")
    }

    @Test func positionIsLineAndColumn() throws {
        let v = try #require(violation("{\n  \"a\": 1,\n  \"é\": tru\n}"))
        #expect(v.line == 3 && v.column == 8 && v.offset == 20, "\(v)")
        #expect(v.problem.contains("invalid literal \"tru\""))
        #expect(v.description == "é: invalid literal \"tru\"; expected true, false or null (line 3, column 8)")
        let bad = try #require(violation("[1,,2]"))
        #expect(bad.offset == 3 && bad.line == 1 && bad.column == 4)
    }

    @Test func limitsAreConfigurable() {
        var limits = StrictJSON.Limits()
        limits.maxDepth = 2
        #expect(violation("[[1]]", limits: limits) == nil)
        #expect(violation("[[[1]]]", limits: limits)?.problem == "nesting deeper than 2 levels")
        limits.maxMembers = 3
        #expect(violation("[1,2,3]", limits: limits) == nil)
        #expect(violation("[1,2,3,4]", limits: limits)?.problem == "more than 3 elements in one array")
        #expect(violation(#"{"a":1,"b":2,"c":3,"d":4}"#, limits: limits)?.problem == "more than 3 members in one object")
        limits.maxStringBytes = 3
        #expect(violation(#"["abc"]"#, limits: limits) == nil)
        #expect(violation(#"["abcd"]"#, limits: limits)?.problem == "string longer than 3 bytes")
        #expect(violation(#"{"abcd": 1}"#, limits: limits)?.problem == "string longer than 3 bytes")
        limits.maxBytes = 4
        #expect(violation("[12]", limits: limits) == nil)
        #expect(violation("[123]", limits: limits)?.problem == "body larger than 4 bytes")
    }

    @Test func largeInputsStayLinear() throws {
        // 1 MiB of small members: one pass, no quadratic key handling.
        var doc = "["
        var k = 0
        while doc.utf8.count < (1 << 20) - 64 {
            doc += #"{"id": \#(k), "v": [1.5e3, true, "s\u00e9"]},"#
            k += 1
        }
        doc += "0]"
        var limits = StrictJSON.Limits()
        limits.maxMembers = 1 << 20
        try StrictJSON.validate(Array(doc.utf8), limits: limits)
        // Ten thousand members of one object.
        let members = (0..<10_000).map { #""k\#($0)": \#($0)"# }.joined(separator: ",")
        try StrictJSON.validate(Array("{\(members)}".utf8))
        #expect(violation("{\(members)}".replacingOccurrences(of: #""k9999""#, with: #""k5""#))?.problem == #"duplicate key "k5""#)
    }

    /// Random mutations of a few seed documents: validation never traps, and what it accepts
    /// Foundation accepts too.
    @Test func fuzzedMutationsAreConsistentWithFoundation() {
        let seeds: [[UInt8]] = [
            #"{"name": "run", "moco": {"queue": 4096, "momentum": 0.999, "bn_splits": 8}, "optim": {"lr": 0.03, "epochs": [1, 2.5e-3, -0]}}"#,
            #"[true, false, null, "\ud83d\ude00 \u00e9 \n\t\"", {"a": {}, "b": []}, 1E+10]"#,
            "{\"héllo\": \"wörld 日本 😀\", \"x\": [0.5, -12, 3e2], \"y\": null}",
            #""plain string with \/ and \\ escapes""#,
        ].map { Array($0.utf8) }
        let tokens: [[UInt8]] = [",", "]", "}", "[", "{", "\"", "\\", ":", "0", "-", ".", "e", "NaN", "1e400", "\\ud800", "\\u",
                                 "true", "null", " ", "\n"].map { Array($0.utf8) } + [[0x00], [0xC0], [0xFF], [0xED, 0xA0, 0x80], [0xE2, 0x82]]
        var rng = SplitMix64(state: 0x5EED_2024)
        var accepted = 0
        for _ in 0..<20_000 {
            var doc = seeds[Int.random(in: 0..<seeds.count, using: &rng)]
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let at = Int.random(in: 0...doc.count, using: &rng)
                switch Int.random(in: 0..<6, using: &rng) {
                case 0 where at < doc.count: doc[at] = UInt8.random(in: 0...255, using: &rng)
                case 1 where at < doc.count: doc[at] ^= 1 << UInt8.random(in: 0..<8, using: &rng)
                case 2: doc.insert(UInt8.random(in: 0...255, using: &rng), at: at)
                case 3: doc.insert(contentsOf: tokens[Int.random(in: 0..<tokens.count, using: &rng)], at: at)
                case 4 where at < doc.count: doc.removeSubrange(at..<min(doc.count, at + Int.random(in: 1...4, using: &rng)))
                default: doc.removeSubrange(at...)
                }
            }
            do {
                try StrictJSON.validate(doc)
                accepted += 1
                #expect((try? JSONSerialization.jsonObject(with: Data(doc), options: [.fragmentsAllowed])) != nil,
                        "accepted but Foundation rejects: \(String(decoding: doc, as: UTF8.self))")
            } catch {
                #expect(error.offset >= 0 && error.offset <= doc.count && !error.problem.isEmpty)
            }
        }
        #expect(accepted > 100)   // the mutations leave enough valid documents to compare
    }
}
