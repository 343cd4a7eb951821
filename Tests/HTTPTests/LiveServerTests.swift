import Foundation
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

    @Test func maxConnectionsAnswered503() throws {
        let s = try server { $0.maxConnections = 2 }
        defer { s.shutdown() }
        let a = try RawClient(port: s.port), b = try RawClient(port: s.port)
        a.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        b.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        _ = a.responses(1); _ = b.responses(1)
        let c = try RawClient(port: s.port)
        c.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(c.responses(1).first?.status == 503)
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
