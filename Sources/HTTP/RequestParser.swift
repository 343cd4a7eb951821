/// Why a request cannot be served, and the status to answer before closing the connection.
public struct HTTPParseError: Error, Equatable, Sendable, CustomStringConvertible {
    public let status: HTTPStatus
    public let reason: String
    public init(_ status: HTTPStatus, _ reason: String) { self.status = status; self.reason = reason }
    public var description: String { "\(status): \(reason)" }
}

/// Size limits the parser enforces (the defaults are the server's).
public struct HTTPLimits: Sendable, Equatable {
    /// Request line, CRLF excluded → 414.
    public var maxRequestLine = 8 * 1024
    /// Whole header section (and trailers) → 431.
    public var maxHeaderBytes = 16 * 1024
    /// Number of header fields → 431.
    public var maxHeaderCount = 100
    /// Body, fixed or chunked → 413.
    public var maxBodyBytes = 1 << 20
    public init() {}
}

/// What the parser produced from the bytes fed so far.
public enum ParseResult: Equatable, Sendable {
    /// Feed more bytes.
    case needMoreData
    /// A complete request head; body parts (if any) and `.end` follow.
    case head(HTTPRequestHead)
    case body([UInt8])
    /// The request (head and body) is complete; the next request may follow on the connection.
    case end
    /// The request is malformed: answer with its status and close. Every later call repeats it.
    case error(HTTPParseError)
}

/// An incremental HTTP/1.1 request parser (RFC 9112): a pure state machine fed bytes in any
/// split. Framing is strict — whatever a lenient parser might read as a second request is an
/// error here, and the connection is closed.
public struct RequestParser: Sendable {
    enum State: Sendable, Equatable {
        case requestLine
        case headers
        case fixedBody(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers
        /// The message is complete; the next call reports `.end`.
        case endOfMessage
        case failed(HTTPParseError)
    }

    public let limits: HTTPLimits
    private var buffer: [UInt8] = []
    private var offset = 0
    private var state = State.requestLine
    private var head: HTTPRequestHead?
    private var headerBytes = 0
    private var bodyBytes = 0
    private var emptyLinesSkipped = 0

    public init(limits: HTTPLimits = HTTPLimits()) { self.limits = limits }

    /// Bytes received but not yet parsed (e.g. a pipelined request behind the current one).
    public var bufferedByteCount: Int { buffer.count - offset }

    /// Whether a request head has been read and its message is not yet complete.
    public var inMessage: Bool {
        switch state {
        case .requestLine, .failed: false
        default: head != nil
        }
    }

    public mutating func feed<S: Sequence>(_ bytes: S) where S.Element == UInt8 {
        if offset > 4096 && offset * 2 > buffer.count {
            buffer.removeFirst(offset)
            offset = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next event, consuming the bytes it covers.
    public mutating func next() -> ParseResult {
        switch state {
        case .failed(let e):
            return .error(e)
        case .endOfMessage:
            return finishedBody()
        case .requestLine:
            return parseRequestLine()
        case .headers:
            return parseHeaders()
        case .fixedBody(let remaining):
            guard bufferedByteCount > 0 else { return .needMoreData }
            let n = min(remaining, bufferedByteCount)
            let chunk = Array(buffer[offset..<(offset + n)])
            offset += n
            state = remaining - n == 0 ? .endOfMessage : .fixedBody(remaining: remaining - n)
            return .body(chunk)
        case .chunkSize:
            return parseChunkSize()
        case .chunkData(let remaining):
            guard bufferedByteCount > 0 else { return .needMoreData }
            let n = min(remaining, bufferedByteCount)
            let chunk = Array(buffer[offset..<(offset + n)])
            offset += n
            state = remaining - n == 0 ? .chunkDataEnd : .chunkData(remaining: remaining - n)
            return .body(chunk)
        case .chunkDataEnd:
            guard bufferedByteCount >= 2 else { return .needMoreData }
            guard buffer[offset] == cr && buffer[offset + 1] == lf else { return fail(.badRequest, "chunk data not followed by CRLF") }
            offset += 2
            state = .chunkSize
            return next()
        case .trailers:
            return parseTrailers()
        }
    }

    /// `.end` for a request whose body just finished; the fixed and chunked paths both come here.
    private mutating func finishedBody() -> ParseResult {
        state = .requestLine
        head = nil
        return .end
    }

    private mutating func fail(_ status: HTTPStatus, _ reason: String) -> ParseResult {
        let e = HTTPParseError(status, reason)
        state = .failed(e)
        return .error(e)
    }

    // MARK: - Lines

    enum Line { case line(ArraySlice<UInt8>), incomplete, bad(String) }

    /// The next CRLF-terminated line (without CRLF). A bare LF, or a CR not followed by LF, is an error.
    private mutating func readLine(limit: Int) -> Line {
        var i = offset
        let end = buffer.count
        while i < end {
            let b = buffer[i]
            if b == lf { return .bad("bare LF where CRLF is required") }
            if b == cr {
                guard i + 1 < end else { return .incomplete }
                guard buffer[i + 1] == lf else { return .bad("bare CR where CRLF is required") }
                let line = buffer[offset..<i]
                offset = i + 2
                return .line(line)
            }
            i += 1
            if i - offset > limit { return .incomplete }
        }
        return .incomplete
    }

    // MARK: - Request line

    private mutating func parseRequestLine() -> ParseResult {
        // Empty lines before a request line are ignored (RFC 9112 §2.2), a few of them.
        while bufferedByteCount >= 2 && buffer[offset] == cr && buffer[offset + 1] == lf {
            emptyLinesSkipped += 1
            if emptyLinesSkipped > 4 { return fail(.badRequest, "empty lines instead of a request") }
            offset += 2
        }
        if bufferedByteCount == 0 { return .needMoreData }
        switch readLine(limit: limits.maxRequestLine) {
        case .bad(let why): return fail(.badRequest, why)
        case .incomplete:
            // Reject garbage at once instead of waiting for a line end that may never come.
            if let problem = earlyRequestLineProblem() { return fail(.badRequest, problem) }
            if bufferedByteCount > limits.maxRequestLine { return fail(.uriTooLong, "request line longer than \(limits.maxRequestLine) bytes") }
            return .needMoreData
        case .line(let line):
            emptyLinesSkipped = 0
            if line.count > limits.maxRequestLine { return fail(.uriTooLong, "request line longer than \(limits.maxRequestLine) bytes") }
            let parts = line.split(separator: sp, maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { return fail(.badRequest, "request line is not 'method SP target SP version'") }
            let (m, t, v) = (parts[0], parts[1], parts[2])
            guard !m.isEmpty, m.count <= 32, m.allSatisfy(isTokenChar) else { return fail(.badRequest, "invalid method") }
            guard !t.isEmpty, t.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
                return fail(.badRequest, "request target is empty or holds spaces, control or non-ASCII bytes")
            }
            guard v.count == 8, v.starts(with: Array("HTTP/".utf8)), isDigit(v[v.startIndex + 5]), v[v.startIndex + 6] == 0x2e, isDigit(v[v.startIndex + 7]) else {
                return fail(.badRequest, "invalid HTTP version")
            }
            let major = Int(v[v.startIndex + 5] - 0x30), minor = Int(v[v.startIndex + 7] - 0x30)
            guard major == 1, minor <= 1 else { return fail(.versionNotSupported, "only HTTP/1.0 and HTTP/1.1 are served") }
            let method = String(decoding: m, as: UTF8.self)
            var target = String(decoding: t, as: UTF8.self)
            if target.hasPrefix("/") {
                // origin-form
            } else if target == "*" {
                guard method == "OPTIONS" else { return fail(.badRequest, "'*' is a target for OPTIONS only") }
            } else if let rest = target.lowercased().hasPrefix("http://") ? target.dropFirst(7) : target.lowercased().hasPrefix("https://") ? target.dropFirst(8) : nil {
                // absolute-form: keep the path (the Host header is checked below).
                target = rest.firstIndex(of: "/").map { String(rest[$0...]) } ?? "/"
            } else {
                return fail(.badRequest, "request target must be a path")
            }
            head = HTTPRequestHead(method: method, target: target, minorVersion: minor)
            headerBytes = 0
            state = .headers
            return next()
        }
    }

    /// Problems visible before the request line ends: a method that is not a token, or a
    /// control byte anywhere (binary data, a TLS ClientHello).
    private func earlyRequestLineProblem() -> String? {
        var sawSpace = false
        for b in buffer[offset...] {
            if b == sp { sawSpace = true; continue }
            if b == cr || b == lf { continue }
            if !sawSpace && !isTokenChar(b) { return "not an HTTP request (invalid method bytes)" }
            if b < 0x20 || b == 0x7f { return "control bytes in the request line" }
        }
        return nil
    }

    // MARK: - Header section

    private mutating func parseHeaders() -> ParseResult {
        while true {
            let before = offset
            switch readLine(limit: limits.maxHeaderBytes) {
            case .bad(let why): return fail(.badRequest, why)
            case .incomplete:
                if headerBytes + bufferedByteCount > limits.maxHeaderBytes {
                    return fail(.headerFieldsTooLarge, "header section larger than \(limits.maxHeaderBytes) bytes")
                }
                return .needMoreData
            case .line(let line):
                headerBytes += offset - before
                if headerBytes > limits.maxHeaderBytes { return fail(.headerFieldsTooLarge, "header section larger than \(limits.maxHeaderBytes) bytes") }
                if line.isEmpty { return headersComplete() }
                if head!.headers.count >= limits.maxHeaderCount { return fail(.headerFieldsTooLarge, "more than \(limits.maxHeaderCount) header fields") }
                switch parseField(line) {
                case .failure(let e): return fail(e.status, e.reason)
                case .success(let (name, value)): head!.headers.add(name, value)
                }
            }
        }
    }

    private func parseField(_ line: ArraySlice<UInt8>) -> Result<(String, String), HTTPParseError> {
        guard let first = line.first else { return .failure(HTTPParseError(.badRequest, "empty field")) }
        if first == sp || first == ht { return .failure(HTTPParseError(.badRequest, "obsolete line folding is not accepted")) }
        guard let colon = line.firstIndex(of: 0x3a) else { return .failure(HTTPParseError(.badRequest, "header line without a colon")) }
        let name = line[line.startIndex..<colon]
        guard !name.isEmpty, name.allSatisfy(isTokenChar) else {
            return .failure(HTTPParseError(.badRequest, "invalid header name (whitespace before the colon or a non-token byte)"))
        }
        var value = line[(colon + 1)...]
        while let f = value.first, f == sp || f == ht { value = value.dropFirst() }
        while let l = value.last, l == sp || l == ht { value = value.dropLast() }
        for b in value where (b < 0x20 && b != ht) || b == 0x7f {
            return .failure(HTTPParseError(.badRequest, "control byte in the value of \(String(decoding: name, as: UTF8.self))"))
        }
        return .success((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
    }

    private mutating func headersComplete() -> ParseResult {
        guard let h = head else { return fail(.internalServerError, "no request head") }
        let hosts = h.headers.values("Host")
        if h.minorVersion == 1 && hosts.isEmpty { return fail(.badRequest, "HTTP/1.1 request without Host") }
        if hosts.count > 1 { return fail(.badRequest, "more than one Host field") }
        if let host = hosts.first, host.contains(where: { $0 == " " || $0 == "\t" || $0 == "/" || $0 == "@" }) {
            return fail(.badRequest, "invalid Host")
        }
        let te = h.headers.values("Transfer-Encoding")
        let cl = h.headers.values("Content-Length")
        if !te.isEmpty {
            if !cl.isEmpty { return fail(.badRequest, "both Content-Length and Transfer-Encoding") }
            if h.minorVersion == 0 { return fail(.badRequest, "Transfer-Encoding in an HTTP/1.0 request") }
            let codings = te.flatMap { $0.split(separator: ",", omittingEmptySubsequences: false) }.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            guard codings == ["chunked"] else { return fail(.notImplemented, "only the chunked transfer coding is supported") }
            bodyBytes = 0
            state = .chunkSize
            return .head(h)
        }
        if cl.count > 1 { return fail(.badRequest, "more than one Content-Length field") }
        if let v = cl.first {
            guard !v.isEmpty, v.utf8.count <= 15, v.utf8.allSatisfy(isDigit), let n = Int(v) else {
                return fail(.badRequest, "Content-Length must be a decimal number of at most 15 digits")
            }
            if n > limits.maxBodyBytes { return fail(.payloadTooLarge, "body of \(n) bytes exceeds the \(limits.maxBodyBytes)-byte limit") }
            if n > 0 {
                state = .fixedBody(remaining: n)
                return .head(h)
            }
        }
        // No body: the head is followed directly by the end.
        state = .endOfMessage
        return .head(h)
    }

    // MARK: - Chunked body

    private mutating func parseChunkSize() -> ParseResult {
        switch readLine(limit: 1024) {
        case .bad(let why): return fail(.badRequest, why)
        case .incomplete:
            if bufferedByteCount > 1024 { return fail(.badRequest, "chunk size line too long") }
            return .needMoreData
        case .line(let line):
            let sizePart = line.prefix { $0 != 0x3b }   // chunk extensions after ';' are ignored
            guard !sizePart.isEmpty, sizePart.count <= 15, sizePart.allSatisfy(isHexDigit) else {
                return fail(.badRequest, "invalid chunk size")
            }
            for b in line.dropFirst(sizePart.count) where (b < 0x20 && b != ht) || b == 0x7f {
                return fail(.badRequest, "control byte in a chunk extension")
            }
            let size = sizePart.reduce(0) { $0 * 16 + hexValue($1) }
            bodyBytes += size
            if bodyBytes > limits.maxBodyBytes { return fail(.payloadTooLarge, "body exceeds the \(limits.maxBodyBytes)-byte limit") }
            if size == 0 {
                headerBytes = 0
                state = .trailers
                return next()
            }
            state = .chunkData(remaining: size)
            return next()
        }
    }

    private mutating func parseTrailers() -> ParseResult {
        while true {
            let before = offset
            switch readLine(limit: limits.maxHeaderBytes) {
            case .bad(let why): return fail(.badRequest, why)
            case .incomplete:
                if headerBytes + bufferedByteCount > limits.maxHeaderBytes { return fail(.headerFieldsTooLarge, "trailer section too large") }
                return .needMoreData
            case .line(let line):
                headerBytes += offset - before
                if headerBytes > limits.maxHeaderBytes { return fail(.headerFieldsTooLarge, "trailer section too large") }
                if line.isEmpty { return finishedBody() }
                if case .failure(let e) = parseField(line) { return fail(e.status, e.reason) }
            }
        }
    }
}

let cr: UInt8 = 0x0d, lf: UInt8 = 0x0a, sp: UInt8 = 0x20, ht: UInt8 = 0x09

@inline(__always) func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }
@inline(__always) func isHexDigit(_ b: UInt8) -> Bool { isDigit(b) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66) }
@inline(__always) func hexValue(_ b: UInt8) -> Int { isDigit(b) ? Int(b - 0x30) : Int((b | 0x20) - 0x61 + 10) }

/// RFC 9110 tchar.
@inline(__always) func isTokenChar(_ b: UInt8) -> Bool {
    switch b {
    case 0x30...0x39, 0x41...0x5a, 0x61...0x7a: true
    case 0x21, 0x23, 0x24, 0x25, 0x26, 0x27, 0x2a, 0x2b, 0x2d, 0x2e, 0x5e, 0x5f, 0x60, 0x7c, 0x7e: true
    default: false
    }
}
