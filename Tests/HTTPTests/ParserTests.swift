import Foundation
@testable import HTTP
import Testing

/// Feeds `bytes` in the given split sizes and collects events until the parser needs more
/// data at the end, or fails.
func parse(_ bytes: [UInt8], splits: [Int]? = nil, limits: HTTPLimits = HTTPLimits()) -> [ParseResult] {
    var p = RequestParser(limits: limits)
    var out: [ParseResult] = []
    var i = 0
    var sizes = splits ?? [bytes.count]
    if sizes.isEmpty { sizes = [max(bytes.count, 1)] }
    var k = 0
    while i < bytes.count {
        let n = max(1, min(sizes[k % sizes.count], bytes.count - i))
        k += 1
        p.feed(bytes[i..<(i + n)])
        i += n
        while true {
            let e = p.next()
            if e == .needMoreData { break }
            // Merge body pieces so that every split reads the same.
            if case .body(let b) = e, case .body(let prev)? = out.last { out[out.count - 1] = .body(prev + b); continue }
            out.append(e)
            if case .error = e { return out }
        }
    }
    return out
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

@Suite struct ParserTests {
    static let valid: [String] = [
        "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /v1/jobs?state=running&limit=5 HTTP/1.1\r\nHost: localhost:8080\r\nAccept: */*\r\n\r\n",
        "POST /v1/jobs HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\nContent-Type: application/json\r\n\r\n{\"name\":1}\n",
        "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
        "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Spaces:   padded value  \r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://example.com/abs?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "PUT /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Obs: caf\u{e9}\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
    ]

    /// Every valid request reads the same whole, byte by byte and in random splits.
    @Test(arguments: valid)
    func sameResultWhateverTheSplit(_ text: String) {
        let b = bytes(text)
        let whole = parse(b)
        #expect(whole.last == .end, "\(whole)")
        #expect(parse(b, splits: [1]) == whole)
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<20 { #expect(parse(b, splits: (0..<8).map { _ in Int.random(in: 1...7, using: &rng) }) == whole) }
    }

    @Test func headsAndBodies() {
        let r = parse(bytes(Self.valid[3]))
        guard case .head(let h) = r[0] else { Issue.record("\(r)"); return }
        #expect(h.method == "POST" && h.target == "/x" && h.minorVersion == 1)
        #expect(r[1] == .body(bytes("hello world")) && r[2] == .end)
        guard case .head(let q) = parse(bytes(Self.valid[1]))[0] else { return }
        #expect(q.path == "/v1/jobs" && q.query == "state=running&limit=5" && q.headers["host"] == "localhost:8080")
        guard case .head(let abs) = parse(bytes(Self.valid[8]))[0] else { return }
        #expect(abs.target == "/abs?q=1")
        guard case .head(let sp) = parse(bytes(Self.valid[6]))[0] else { return }
        #expect(sp.headers["x-spaces"] == "padded value" && sp.headers["X-Empty"] == "")
    }

    @Test func pipelinedRequestsComeInOrder() {
        let two = bytes("GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
        for splits in [nil, [1], [5, 3]] as [[Int]?] {
            let r = parse(two, splits: splits)
            let targets = r.compactMap { e -> String? in if case .head(let h) = e { h.target } else { nil } }
            #expect(targets == ["/1", "/2", "/3"])
            #expect(r.filter { $0 == .end }.count == 3)
            #expect(r.contains(.body(bytes("abc"))))
        }
    }

    @Test func keepAliveRules() {
        func head(_ s: String) -> HTTPRequestHead { if case .head(let h) = parse(bytes(s))[0] { h } else { HTTPRequestHead(method: "?", target: "/") } }
        #expect(head("GET / HTTP/1.1\r\nHost: a\r\n\r\n").keepAlive)
        #expect(!head("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keepAlive)
        #expect(!head("GET / HTTP/1.0\r\n\r\n").keepAlive)
        #expect(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keepAlive)
        #expect(head("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n").expectsContinue)
    }

    static var limits: HTTPLimits {
        var l = HTTPLimits()
        l.maxRequestLine = 100
        l.maxHeaderBytes = 200
        l.maxHeaderCount = 5
        l.maxBodyBytes = 50
        return l
    }

    @Test func limitsAtTheEdge() {
        let l = Self.limits
        // Request line: 100 bytes pass, 101 fail with 414.
        let at = "GET /" + String(repeating: "a", count: 100 - 14) + " HTTP/1.1"
        #expect(at.utf8.count == 100)
        #expect(parse(bytes(at + "\r\nHost: a\r\n\r\n"), limits: l).last == .end)
        if case .error(let e) = parse(bytes("GET /a" + String(repeating: "a", count: 100 - 14) + " HTTP/1.1\r\nHost: a\r\n\r\n"), limits: l).last {
            #expect(e.status == .uriTooLong)
        } else { Issue.record("long line accepted") }
        // Field count: 5 pass, 6 fail with 431.
        let five = (0..<4).map { "X-\($0): v\r\n" }.joined()
        #expect(parse(bytes("GET / HTTP/1.1\r\nHost: a\r\n" + five + "\r\n"), limits: l).last == .end)
        if case .error(let e) = parse(bytes("GET / HTTP/1.1\r\nHost: a\r\n" + five + "X-5: v\r\n\r\n"), limits: l).last {
            #expect(e.status == .headerFieldsTooLarge)
        } else { Issue.record("too many fields accepted") }
        // Body: 50 pass, 51 fail with 413, fixed and chunked.
        #expect(parse(bytes("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 50\r\n\r\n" + String(repeating: "b", count: 50)), limits: l).last == .end)
        if case .error(let e) = parse(bytes("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 51\r\n\r\n"), limits: l).last {
            #expect(e.status == .payloadTooLarge)
        } else { Issue.record("big body accepted") }
        if case .error(let e) = parse(bytes("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n33\r\n"), limits: l).last {
            #expect(e.status == .payloadTooLarge)
        } else { Issue.record("big chunk accepted") }
        // Header bytes: a section over 200 bytes fails with 431.
        if case .error(let e) = parse(bytes("GET / HTTP/1.1\r\nHost: a\r\nX: " + String(repeating: "v", count: 200) + "\r\n\r\n"), limits: l).last {
            #expect(e.status == .headerFieldsTooLarge)
        } else { Issue.record("big header accepted") }
    }
}

/// Malformed requests: each gets an error (never a crash) and never a second request.
@Suite struct MalformedCorpusTests {
    static let corpus: [(String, [UInt8])] = {
        var c: [(String, String)] = [
            // Content-Length framing
            ("CL plus", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello"),
            ("CL hex", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello"),
            ("CL negative", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
            ("CL list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello"),
            ("CL differing", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            ("CL duplicate", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            ("CL overflow", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            ("CL empty", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n"),
            ("CL space inside", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 0\r\n\r\n"),
            ("CL decimal", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5.0\r\n\r\nhello"),
            ("CL letters", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: five\r\n\r\n"),
            ("CL unicode digits", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \u{0665}\r\n\r\n"),
            ("CL too big", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n"),
            // Transfer-Encoding
            ("CL and TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            ("TE and CL", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"),
            ("TE gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
            ("TE gzip chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
            ("TE chunked twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
            ("TE two fields", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"),
            ("TE identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"),
            ("TE misspelt", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunkd\r\n\r\n0\r\n\r\n"),
            ("TE xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
            ("TE empty", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n"),
            ("TE in 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            ("TE with space name", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
            ("TE vertical tab", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\u{0B}chunked\r\n\r\n0\r\n\r\n"),
            // Chunk framing
            ("chunk size overflow", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\n"),
            ("chunk size negative", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n"),
            ("chunk size hex prefix", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"),
            ("chunk size empty", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\n"),
            ("chunk size space", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n"),
            ("chunk no CRLF after data", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"),
            ("chunk bare LF after size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
            ("chunk bare LF after data", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n"),
            ("chunk data too long", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n"),
            ("chunk ext control", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;\u{01}\r\nhello\r\n0\r\n\r\n"),
            ("chunk total too big", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n100001\r\n"),
            ("trailer folded", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n"),
            ("trailer no colon", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbroken\r\n\r\n"),
            // Line endings
            ("bare LF request line", "GET / HTTP/1.1\nHost: a\r\n\r\n"),
            ("bare LF header", "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"),
            ("bare LF end", "GET / HTTP/1.1\r\nHost: a\r\n\n"),
            ("bare CR request line", "GET / HTTP/1.1\rHost: a\r\n\r\n"),
            ("bare CR in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"),
            ("LF only", "GET / HTTP/1.1\nHost: a\n\n"),
            // Header syntax
            ("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"),
            ("obs-fold tab", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n"),
            ("space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
            ("tab before colon", "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n"),
            ("no colon", "GET / HTTP/1.1\r\nHost a\r\n\r\n"),
            ("empty name", "GET / HTTP/1.1\r\n: a\r\nHost: a\r\n\r\n"),
            ("name with slash", "GET / HTTP/1.1\r\nHo/st: a\r\n\r\n"),
            ("name with quote", "GET / HTTP/1.1\r\nHo\"st: a\r\n\r\n"),
            ("name non-ascii", "GET / HTTP/1.1\r\nH\u{e9}st: a\r\n\r\n"),
            ("NUL in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\u{0}b\r\n\r\n"),
            ("control in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\u{7}b\r\n\r\n"),
            ("DEL in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\u{7f}b\r\n\r\n"),
            ("first line folded", "GET / HTTP/1.1\r\n Host: a\r\n\r\n"),
            // Host
            ("no host 1.1", "GET / HTTP/1.1\r\n\r\n"),
            ("two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            ("host with space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
            ("host with slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
            ("host with at", "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n"),
            // Request line
            ("no version", "GET /\r\nHost: a\r\n\r\n"),
            ("two spaces", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("trailing space", "GET / HTTP/1.1 \r\nHost: a\r\n\r\n"),
            ("tab separator", "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("space in target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("control in target", "GET /a\u{1}b HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("DEL in target", "GET /a\u{7f} HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("non-ascii target", "GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("relative target", "GET a/b HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("star not options", "GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("empty method", " / HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("method with slash", "GE/T / HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("method too long", String(repeating: "G", count: 40) + " / HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("lowercase version", "GET / http/1.1\r\nHost: a\r\n\r\n"),
            ("version 2", "GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
            ("version 1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
            ("version 0.9", "GET / HTTP/0.9\r\nHost: a\r\n\r\n"),
            ("version long", "GET / HTTP/1.10\r\nHost: a\r\n\r\n"),
            ("version letters", "GET / HTTP/a.b\r\nHost: a\r\n\r\n"),
            ("PRI preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            ("only spaces", "      \r\n\r\n"),
            ("many empty lines", "\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("bare LF empty line", "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            // Smuggling attempts that hide a second request
            ("CL.TE smuggle", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("TE.CL smuggle", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
            ("TE obfuscated smuggle", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-encoding: x\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n"),
            ("double CL smuggle", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("LF smuggle", "GET / HTTP/1.1\r\nHost: a\r\nX: y\nContent-Length: 30\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("fold smuggle", "GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            ("space TE smuggle", "POST / HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
            ("chunk ext smuggle", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;\nxx\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n"),
            ("100 continue oversized", "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5000000\r\n\r\n"),
            ("HTTP/1.0 TE smuggle", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nX"),
            // Oversized parts
            ("huge request line", "GET /" + String(repeating: "a", count: 9000) + " HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("huge header", "GET / HTTP/1.1\r\nHost: a\r\nX: " + String(repeating: "v", count: 17000) + "\r\n\r\n"),
            ("many headers", "GET / HTTP/1.1\r\nHost: a\r\n" + (0..<120).map { "X-\($0): v\r\n" }.joined() + "\r\n"),
            ("huge header name", "GET / HTTP/1.1\r\nHost: a\r\n" + String(repeating: "X", count: 17000) + ": v\r\n\r\n"),
            ("huge chunk line", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;" + String(repeating: "e", count: 2000) + "\r\n"),
            ("huge trailers", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: " + String(repeating: "t", count: 17000) + "\r\n\r\n"),
        ]
        var out = c.map { ($0.0, Array($0.1.utf8)) }
        // Binary noise and other protocols.
        out.append(("TLS ClientHello", [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03] + Array(repeating: 0x42, count: 64)))
        out.append(("SSLv2 hello", [0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15]))
        out.append(("all zero", Array(repeating: 0, count: 64)))
        out.append(("all 0xff", Array(repeating: 0xff, count: 64)))
        var noise = SystemRandomNumberGenerator()
        for i in 0..<8 { out.append(("noise \(i)", (0..<200).map { _ in UInt8.random(in: 0...255, using: &noise) | 0x80 })) }
        out.append(("high bytes in method", [0xc3, 0xa9] + Array(" / HTTP/1.1\r\nHost: a\r\n\r\n".utf8)))
        out.append(("NUL in request line", Array("GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n".utf8)))
        out.append(("SMTP", Array("EHLO example.com\r\n".utf8)))
        out.append(("JSON", Array("{\"a\": 1}\r\n\r\n".utf8)))
        return out
    }()

    @Test func corpusHasAtLeastAHundredCases() { #expect(Self.corpus.count >= 100) }

    @Test(arguments: corpus.map(\.0))
    func rejected(_ name: String) {
        let input = Self.corpus.first { $0.0 == name }!.1
        for splits in [nil, [1], [3, 7]] as [[Int]?] {
            let events = parse(input, splits: splits)
            let heads = events.filter { if case .head = $0 { true } else { false } }.count
            let failed = events.contains { if case .error(let e) = $0 { e.status.code >= 400 } else { false } }
            #expect(failed, "\(name): \(events)")
            #expect(heads <= 1, "\(name): a second request was read")
            // A request that completed before the error must be the only one, and nothing after it.
            if let i = events.firstIndex(where: { if case .error = $0 { true } else { false } }) { #expect(i == events.count - 1) }
        }
    }
}

/// The fuzzer's seed corpus and every crasher it ever found (Tests/Fixtures/fuzz), replayed.
@Suite struct FuzzReplayTests {
    @Test func replayCorpusAndCrashers() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/fuzz")
        var count = 0
        for dir in ["corpus", "crashers"] {
            let url = root.appendingPathComponent(dir)
            for name in (try? FileManager.default.contentsOfDirectory(atPath: url.path)) ?? [] where !name.hasPrefix(".") {
                fuzzRequestParser([UInt8](try Data(contentsOf: url.appendingPathComponent(name))))
                count += 1
            }
        }
        #expect(count >= 10)
        // And the malformed corpus through the same invariants.
        for (_, input) in MalformedCorpusTests.corpus { fuzzRequestParser(input) }
    }
}
