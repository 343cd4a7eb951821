import Foundation
import Synchronization
@testable import HTTP
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A blocking test client on a raw socket, for byte-exact requests and responses.
final class RawClient {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw ServerError("connect failed") }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func send(_ s: String) { send(Array(s.utf8)) }
    func send(_ b: [UInt8]) { _ = b.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }

    /// Reads until `count` complete responses arrived (or EOF/timeout); returns them parsed.
    func responses(_ count: Int) -> [(status: Int, headers: [String: String], body: [UInt8])] {
        var buf: [UInt8] = []
        var out: [(Int, [String: String], [UInt8])] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while out.count < count {
            if let (r, used) = Self.parseResponse(buf) { out.append(r); buf.removeFirst(used); continue }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            buf += chunk[0..<n]
        }
        return out
    }

    /// Whether the server closed the connection (recv returns 0) within the timeout.
    func isClosedByServer() -> Bool {
        var b = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = b.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return true }
            if n < 0 { return errno == ECONNRESET }
        }
    }

    static func parseResponse(_ b: [UInt8]) -> ((Int, [String: String], [UInt8]), Int)? {
        guard let end = (0..<max(0, b.count - 3)).first(where: { b[$0] == 13 && b[$0 + 1] == 10 && b[$0 + 2] == 13 && b[$0 + 3] == 10 }) else { return nil }
        let head = String(decoding: b[0..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let status = Int(head[0].split(separator: " ")[1])!
        var headers: [String: String] = [:]
        for line in head.dropFirst() { let p = line.split(separator: ":", maxSplits: 1); headers[p[0].lowercased()] = p.count > 1 ? p[1].trimmingCharacters(in: .whitespaces) : "" }
        var i = end + 4
        if status == 100 { return ((100, headers, []), i) }
        if headers["transfer-encoding"] == "chunked" {
            var body: [UInt8] = []
            while true {
                guard let le = (i..<max(i, b.count - 1)).first(where: { b[$0] == 13 && b[$0 + 1] == 10 }) else { return nil }
                let size = Int(String(decoding: b[i..<le], as: UTF8.self), radix: 16)!
                if size == 0 { guard b.count >= le + 4 else { return nil }; return ((status, headers, body), le + 4) }
                guard b.count >= le + 2 + size + 2 else { return nil }
                body += b[(le + 2)..<(le + 2 + size)]
                i = le + 2 + size + 2
            }
        }
        let length = Int(headers["content-length"] ?? "0")!
        guard b.count >= i + length else { return nil }
        return ((status, headers, Array(b[i..<(i + length)])), i + length)
    }

    deinit { close(fd) }
}

func openFileDescriptors() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1 }

@Suite(.serialized) struct LiveServerTests {
    static let gate = DispatchSemaphore(value: 0)

    func server(_ configure: (inout ServerConfiguration) -> Void = { _ in }) throws -> HTTPServer {
        var cfg = ServerConfiguration()
        cfg.port = 0
        cfg.shutdownGrace = 2
        configure(&cfg)
        var router = Router()
        router.add("GET", "/hello") { _ in HTTPResponse(contentType: "text/plain", text: "hello") }
        router.add("POST", "/echo") { r in HTTPResponse(status: .ok, headers: HTTPHeaders([("Content-Type", "application/octet-stream")]), body: .bytes(r.body)) }
        router.add("GET", "/items/{id}") { r in HTTPResponse(contentType: "text/plain", text: "item \(r.pathParameters["id"]!)") }
        router.add("GET", "/slow") { _ in usleep(200_000); return HTTPResponse(contentType: "text/plain", text: "slow") }
        // Answers once the test opens the gate (at most 5 s): a request surely in flight at a moment the test picks.
        router.add("GET", "/gated") { _ in _ = LiveServerTests.gate.wait(timeout: .now() + 5); return HTTPResponse(contentType: "text/plain", text: "slow") }
        router.add("GET", "/bad-header") { _ in HTTPResponse(status: .ok, headers: HTTPHeaders([("X-Evil", "a\r\nSet-Cookie: x=1")]), body: .bytes([])) }
        let r = router
        let s = HTTPServer(configuration: cfg) { r.handle($0) }
        try s.start()
        return s
    }

    @Test func keepAliveReusesTheConnection() throws {
        let s = try server()
        defer { s.shutdown() }
        let c = try RawClient(port: s.port)
        for i in 0..<3 {
            c.send("GET /items/\(i) HTTP/1.1\r\nHost: t\r\n\r\n")
            let r = c.responses(1)
            #expect(r.first?.status == 200 && r.first?.body == Array("item \(i)".utf8))
            #expect(r.first?.headers["x-request-id"] != nil)
        }
        #expect(s.connectionCount == 1)
    }

    @Test func pipelinedRequestsAnsweredInOrder() throws {
        let s = try server()
        defer { s.shutdown() }
        let c = try RawClient(port: s.port)
        c.send("GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /items/2 HTTP/1.1\r\nHost: t\r\n\r\nPOST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nxyzGET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        let r = c.responses(4)
        #expect(r.map { String(decoding: $0.body, as: UTF8.self) } == ["slow", "item 2", "xyz", "hello"])
    }

    @Test func connectionCloseAndHTTP10() throws {
        let s = try server()
        defer { s.shutdown() }
        let a = try RawClient(port: s.port)
        a.send("GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        #expect(a.responses(1).first?.headers["connection"] == "close")
        #expect(a.isClosedByServer())
        let b = try RawClient(port: s.port)
        b.send("GET /hello HTTP/1.0\r\n\r\n")
        #expect(b.responses(1).first?.status == 200)
        #expect(b.isClosedByServer())
    }

    /// A client that half-closes after its requests still gets every answer (and, after a
    /// `Connection: close` request, no more); the server lives on.
    @Test func halfClosedClients() throws {
        let s = try server()
        defer { s.shutdown() }
        let a = try RawClient(port: s.port)
        a.send("GET /items/1 HTTP/1.1\r\nHost: t\r\n\r\nGET /items/2 HTTP/1.1\r\nHost: t\r\n\r\n")
        shutdown(a.fd, Int32(SHUT_WR))
        #expect(a.responses(2).map { String(decoding: $0.body, as: UTF8.self) } == ["item 1", "item 2"])
        #expect(a.isClosedByServer())
        let b = try RawClient(port: s.port)
        b.send("GET /slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /items/3 HTTP/1.1\r\nHost: t\r\n\r\n")
        shutdown(b.fd, Int32(SHUT_WR))
        let r = b.responses(2)
        #expect(r.count == 1 && r.first?.body == Array("slow".utf8))
        let c = try RawClient(port: s.port)
        c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        shutdown(c.fd, Int32(SHUT_WR))
        #expect(c.isClosedByServer())   // the body can never complete
        let d = try RawClient(port: s.port)
        d.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(d.responses(1).first?.status == 200)
    }

    @Test func errorsGetTheirStatusAndClose() throws {
        let s = try server()
        defer { s.shutdown() }
        for (req, status) in [("GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", 404), ("DELETE /hello HTTP/1.1\r\nHost: t\r\n\r\n", 405),
                              ("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
                              ("GET / HTTP/1.1\r\n\r\n", 400), ("GET /bad-header HTTP/1.1\r\nHost: t\r\n\r\n", 500)] {
            let c = try RawClient(port: s.port)
            c.send(req)
            let r = c.responses(1).first
            #expect(r?.status == status, "\(req)")
            if status == 405 { #expect(r?.headers["allow"] == "GET, HEAD") }
            if let body = r?.body, status != 500 {
                let json = try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any]
                #expect((json?["error"] as? [String: Any])?["code"] != nil)
            }
        }
    }

    @Test func limitsAtTheEdges() throws {
        let s = try server { $0.limits.maxBodyBytes = 100; $0.limits.maxRequestLine = 200; $0.limits.maxHeaderCount = 10 }
        defer { s.shutdown() }
        func post(_ n: Int) throws -> Int? {
            let c = try RawClient(port: s.port)
            c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: \(n)\r\n\r\n" + String(repeating: "a", count: n))
            return c.responses(1).first?.status
        }
        #expect(try post(99) == 200)
        #expect(try post(100) == 200)
        #expect(try post(101) == 413)
        func get(pathLength: Int) throws -> Int? {
            let c = try RawClient(port: s.port)
            let path = "/items/" + String(repeating: "a", count: pathLength - 7)
            c.send("GET \(path) HTTP/1.1\r\nHost: t\r\n\r\n")
            return c.responses(1).first?.status
        }
        #expect(try get(pathLength: 200 - 13) == 200)   // request line exactly 200 bytes
        #expect(try get(pathLength: 200 - 12) == 414)
        func headers(_ n: Int) throws -> Int? {
            let c = try RawClient(port: s.port)
            c.send("GET /hello HTTP/1.1\r\nHost: t\r\n" + (0..<(n - 1)).map { "X-\($0): v\r\n" }.joined() + "\r\n")
            return c.responses(1).first?.status
        }
        #expect(try headers(10) == 200)
        #expect(try headers(11) == 431)
    }

    @Test func expectContinue() throws {
        let s = try server()
        defer { s.shutdown() }
        let c = try RawClient(port: s.port)
        c.send("POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        #expect(c.responses(1).first?.status == 100)
        c.send("data")
        let r = c.responses(1).first
        #expect(r?.status == 200 && r?.body == Array("data".utf8))
    }

    @Test func slowClientIsClosedWhileOthersAreServed() throws {
        let s = try server { $0.headerTimeout = 0.5 }
        defer { s.shutdown() }
        let slow = try RawClient(port: s.port)
        slow.send("GET /hello HTTP/1.1\r\nHo")
        let start = Date()
        let fast = try RawClient(port: s.port)
        fast.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(fast.responses(1).first?.status == 200)
        let r = slow.responses(1).first
        #expect(r?.status == 408)
        #expect(Date().timeIntervalSince(start) >= 0.4)
        #expect(slow.isClosedByServer())
    }

    /// A complete request followed by half of the next one: the half keeps the header deadline
    /// (it used to get the 60 s idle timeout once the first response was written).
    @Test func pipelinedHalfHeadKeepsTheHeaderTimeout() throws {
        let s = try server { $0.headerTimeout = 0.5; $0.idleTimeout = 30 }
        defer { s.shutdown() }
        let c = try RawClient(port: s.port)
        let start = Date()
        c.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHo")
        let rs = c.responses(2)
        #expect(rs.map(\.status) == [200, 408])
        #expect(c.isClosedByServer())
        #expect(Date().timeIntervalSince(start) < 5, "closed after \(Date().timeIntervalSince(start)) s")
    }

    @Test func bodyTimeoutAndIdleTimeout() throws {
        let s = try server { $0.bodyTimeout = 0.3; $0.idleTimeout = 0.3 }
        defer { s.shutdown() }
        let slowBody = try RawClient(port: s.port)
        slowBody.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        #expect(slowBody.responses(1).first?.status == 408)
        #expect(slowBody.isClosedByServer())
        let idle = try RawClient(port: s.port)
        idle.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(idle.responses(1).first?.status == 200)
        let t0 = Date()
        #expect(idle.isClosedByServer())   // closed quietly once idle
        #expect(Date().timeIntervalSince(t0) >= 0.2)
    }

    /// Shutdown stops accepting, lets the in-flight request finish, and closes.
    @Test func gracefulShutdown() throws {
        let s = try server()
        let busy = try RawClient(port: s.port)
        busy.send("GET /gated HTTP/1.1\r\nHost: t\r\n\r\n")
        // Half a head is no request under way: it is closed at once, not at the grace period.
        let half = try RawClient(port: s.port)
        half.send("GET /hello HTTP/1.1\r\nHo")
        usleep(50_000)
        let done = DispatchSemaphore(value: 0)
        let start = Date()
        DispatchQueue.global().async { s.shutdown(); done.signal() }
        #expect(half.isClosedByServer())
        #expect(Date().timeIntervalSince(start) < 2)
        while !s.isStopping { usleep(1000) }
        Self.gate.signal()   // the in-flight request ends after shutdown began: it says Connection: close
        let r = busy.responses(1).first
        #expect(r?.status == 200 && r?.body == Array("slow".utf8))
        #expect(r?.headers["connection"] == "close")
        #expect(done.wait(timeout: .now() + 5) == .success)
        #expect(throws: (any Error).self) { _ = try RawClient(port: s.port) }
    }

    /// At the cap with every connection in the middle of a request, a new client gets 503 (and
    /// the others are served); an idle keep-alive connection, though, makes room (reclaimed).
    @Test func maxConnectionsAnswered503() throws {
        let s = try server { $0.maxConnections = 2 }
        defer { s.shutdown() }
        let a = try RawClient(port: s.port), b = try RawClient(port: s.port)
        a.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\na")
        b.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nb")
        usleep(50_000)
        let c = try RawClient(port: s.port)
        c.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(c.responses(1).first?.status == 503)
        #expect(s.reclaimedCount == 0)
        a.send("A")
        #expect(a.responses(1).first?.body == Array("aA".utf8))
        usleep(10_000)
        b.send("B")
        #expect(b.responses(1).first?.body == Array("bB".utf8))
        let d = try RawClient(port: s.port)
        d.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(d.responses(1).first?.status == 200)
        #expect(a.isClosedByServer())   // the longest idle
        #expect(s.reclaimedCount == 1)
    }

    @Test func fileDescriptorsReturnToBaseline() throws {
        let before = openFileDescriptors()
        do {
            let s = try server()
            for _ in 0..<20 {
                let c = try RawClient(port: s.port)
                c.send("GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                _ = c.responses(1)
            }
            s.shutdown()
        }
        usleep(200_000)
        #expect(openFileDescriptors() <= before + 1, "open descriptors: \(before) before, \(openFileDescriptors()) after")
    }
}

@Suite(.serialized) struct FileAndStreamTests {
    static let fileBytes: [UInt8] = (0..<10_000).map { UInt8(($0 * 7 + $0 / 256) % 256) }

    func server(file: String) throws -> HTTPServer {
        var router = Router()
        router.add("GET", "/file") { r in FileResponder.respond(path: file, request: r.head, etag: "abc123") }
        router.add("GET", "/events") { _ in
            ServerSentEvents.response { sse in
                for i in 0..<3 { sse.send(event: "tick", id: "\(i)", data: "n=\(i)\nsecond line") }
                sse.heartbeat()
            }
        }
        router.add("GET", "/forever") { _ in
            ServerSentEvents.response { sse in
                while sse.heartbeat() { usleep(20_000) }
                Self.disconnected.withLock { $0 = true }
            }
        }
        let r = router
        var cfg = ServerConfiguration()
        cfg.shutdownGrace = 1
        let s = HTTPServer(configuration: cfg) { r.handle($0) }
        try s.start()
        return s
    }

    static let disconnected = Mutex(false)

    func withFile(_ body: (String) throws -> Void) throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("f-\(UUID())").path
        FileManager.default.createFile(atPath: path, contents: Data(Self.fileBytes))
        defer { try? FileManager.default.removeItem(atPath: path) }
        try body(path)
    }

    func get(_ port: Int, _ headers: String = "", method: String = "GET", path: String = "/file") throws -> (status: Int, headers: [String: String], body: [UInt8]) {
        let c = try RawClient(port: port)
        c.send("\(method) \(path) HTTP/1.1\r\nHost: t\r\n\(headers)\r\n")
        if method == "HEAD" {
            // Headers only: read up to the blank line, then make sure no body follows.
            var buf: [UInt8] = []
            var b = [UInt8](repeating: 0, count: 4096)
            while !(buf.count >= 4 && Array(buf.suffix(4)) == [13, 10, 13, 10]) {
                let n = b.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, 1, 0) }
                if n <= 0 { break }
                buf += b[0..<n]
            }
            var tv = timeval(tv_sec: 0, tv_usec: 300_000)
            setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let extra = b.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, 0) }
            let lines = String(decoding: buf, as: UTF8.self).components(separatedBy: "\r\n").filter { !$0.isEmpty }
            var h: [String: String] = [:]
            for l in lines.dropFirst() { let p = l.split(separator: ":", maxSplits: 1); h[p[0].lowercased()] = p[1].trimmingCharacters(in: .whitespaces) }
            return (Int(lines[0].split(separator: " ")[1]) ?? -1, h, extra > 0 ? Array(b[0..<extra]) : [])
        }
        guard let r = c.responses(1).first else {
            Issue.record("no response to \(method) \(path) with \(headers)")
            return (-1, [:], [])
        }
        return r
    }

    @Test func rangesAgainstTheFileBytes() throws {
        try withFile { path in
            let s = try server(file: path)
            defer { s.shutdown() }
            let size = Self.fileBytes.count
            let full = try get(s.port)
            #expect(full.status == 200 && full.body == Self.fileBytes && full.headers["etag"] == "\"abc123\"" && full.headers["accept-ranges"] == "bytes")
            let cases: [(String, Int, ClosedRange<Int>?)] = [
                ("bytes=0-99", 206, 0...99), ("bytes=100-", 206, 100...(size - 1)), ("bytes=-500", 206, (size - 500)...(size - 1)),
                ("bytes=9990-20000", 206, 9990...(size - 1)), ("bytes=0-0", 206, 0...0), ("bytes=-20000", 206, 0...(size - 1)),
                ("bytes=0-10,5-20", 206, 0...20), ("bytes=0-10,11-20", 206, 0...20),     // overlapping/adjacent: coalesced
                ("bytes=0-10,100-200", 200, nil),                                        // disjoint: the whole file, never more
                ("bytes=" + Array(repeating: "0-9999", count: 50).joined(separator: ","), 206, 0...(size - 1)),
                ("bytes=10000-", 416, nil), ("bytes=20000-30000", 416, nil), ("bytes=-0", 416, nil),
                ("bytes=abc", 200, nil), ("bytes=5-1", 200, nil), ("items=0-5", 200, nil), ("bytes=", 200, nil), ("bytes=--1", 200, nil),
            ]
            for (range, status, span) in cases {
                let r = try get(s.port, "Range: \(range)\r\n")
                #expect(r.status == status, "\(range)")
                if let span {
                    #expect(r.body == Array(Self.fileBytes[span]), "\(range)")
                    if status == 206 { #expect(r.headers["content-range"] == "bytes \(span.lowerBound)-\(span.upperBound)/\(size)") }
                }
                if status == 200 { #expect(r.body == Self.fileBytes, "\(range)") }
                if status == 416 { #expect(r.headers["content-range"] == "bytes */\(size)") }
                #expect(r.body.count <= size)
            }
            // If-Range: a matching tag keeps the range, another tag sends everything.
            #expect(try get(s.port, "Range: bytes=0-9\r\nIf-Range: \"abc123\"\r\n").status == 206)
            #expect(try get(s.port, "Range: bytes=0-9\r\nIf-Range: \"other\"\r\n").body == Self.fileBytes)
            #expect(try get(s.port, "Range: bytes=0-9\r\nIf-Range: \(full.headers["last-modified"]!)\r\n").status == 206)
            // If-None-Match: 304 without a body.
            let nm = try get(s.port, "If-None-Match: \"abc123\"\r\n")
            #expect(nm.status == 304 && nm.body.isEmpty)
            #expect(try get(s.port, "If-None-Match: W/\"abc123\", \"x\"\r\n").status == 304)
            #expect(try get(s.port, "If-None-Match: \"x\"\r\n").status == 200)
            // HEAD: the headers of GET, no body.
            let head = try get(s.port, method: "HEAD")
            #expect(head.status == 200 && head.headers["content-length"] == String(size) && head.body.isEmpty)
        }
    }

    @Test func serverSentEventsAndDisconnect() throws {
        try withFile { path in
            let s = try server(file: path)
            defer { s.shutdown() }
            let r = try get(s.port, path: "/events")
            #expect(r.status == 200 && r.headers["content-type"] == "text/event-stream")
            let text = String(decoding: r.body, as: UTF8.self)
            #expect(text.hasPrefix("event: tick\nid: 0\ndata: n=0\ndata: second line\n\n"))
            #expect(text.contains("id: 2") && text.hasSuffix(": heartbeat\n\n"))
            Self.disconnected.withLock { $0 = false }
            do {
                let c = try RawClient(port: s.port)
                c.send("GET /forever HTTP/1.1\r\nHost: t\r\n\r\n")
                usleep(100_000)
            }   // the client closes here
            let deadline = Date().addingTimeInterval(3)
            while !Self.disconnected.withLock({ $0 }) && Date() < deadline { usleep(10_000) }
            #expect(Self.disconnected.withLock { $0 }, "the producer did not see the client leave")
        }
    }

    /// A 3 GB sparse file is served in bounded memory.
    @Test func hugeFileInBoundedMemory() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sparse-\(UUID())").path
        let fd = open(path, O_CREAT | O_WRONLY, 0o644)
        #expect(ftruncate(fd, 3_000_000_000) == 0)
        close(fd)
        defer { unlink(path) }
        let s = try server(file: path)
        defer { s.shutdown() }
        func rssKB() -> Int {
            let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
        }
        let before = rssKB()
        let c = try RawClient(port: s.port)
        c.send("GET /file HTTP/1.1\r\nHost: t\r\n\r\n")
        var received = 0, peak = before
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        while received < 3_000_000_000 {
            let n = buf.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            received += n
            if received % (256 << 20) < n { peak = max(peak, rssKB()) }
        }
        #expect(received > 3_000_000_000)   // the head plus every byte of the body
        #expect(peak - before < 64 * 1024, "RSS grew by \(peak - before) KiB")
    }
}
