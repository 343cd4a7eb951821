import Foundation
import Synchronization
@testable import HTTP
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Slow clients holding half-sent request heads (slowloris) against the connection cap.
@Suite(.serialized) struct SlowlorisTests {
    func server(maxConnections: Int) throws -> HTTPServer {
        var cfg = ServerConfiguration()
        cfg.port = 0
        cfg.shutdownGrace = 2
        cfg.maxConnections = maxConnections
        cfg.headerTimeout = 10
        var router = Router()
        router.add("GET", "/healthz") { _ in HTTPResponse(contentType: "text/plain", text: "ok") }
        router.add("GET", "/sleep") { _ in usleep(1_000_000); return HTTPResponse(contentType: "text/plain", text: "slept") }
        router.add("POST", "/echo") { r in HTTPResponse(status: .ok, headers: HTTPHeaders([("Content-Type", "application/octet-stream")]), body: .bytes(r.body)) }
        let r = router
        let s = HTTPServer(configuration: cfg) { r.handle($0) }
        try s.start()
        return s
    }

    /// The half of a request head a slowloris client sends, and nothing more.
    static let partialHead = "GET / HTTP/1.1\r\nHost: x\r\n"

    /// `count` sockets that each send half a request head and connect again whenever the server
    /// closes them, at most `rate` connections a second (like slowhttptest's -r), until `stop()`:
    /// one thread polling all of them. The rate keeps the attack from starving the tests that
    /// run in parallel (a free-running reconnect loop takes both cores of a small machine).
    final class Attack: @unchecked Sendable {
        /// Safe to share: `fds` and `connects` are touched only by the attack's thread until `done` is signalled.
        private let port: Int
        private let rate: Double
        private var fds: [Int32]
        private let stopping = Atomic<Bool>(false)
        private let done = DispatchSemaphore(value: 0)
        private(set) var connects = 0

        init(port: Int, count: Int, rate: Double = 500) {
            self.port = port
            self.rate = rate
            fds = Array(repeating: -1, count: count)
            Thread { [self] in run() }.start()
        }

        private func run() {
            defer { done.signal() }
            var buf = [UInt8](repeating: 0, count: 4096)
            let start = Date()
            let deadline = start.addingTimeInterval(30)   // bounded even if never stopped
            while !stopping.load(ordering: .relaxed) && Date() < deadline {
                for i in fds.indices where fds[i] < 0 && Double(connects) < Date().timeIntervalSince(start) * rate {
                    let fd = Self.connectTo(port)
                    guard fd >= 0 else { continue }
                    connects += 1
                    _ = Array(SlowlorisTests.partialHead.utf8).withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    fds[i] = fd
                }
                var polls = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
                guard poll(&polls, nfds_t(polls.count), 2) > 0 else { continue }
                for (i, p) in polls.enumerated() where p.revents != 0 {
                    // A response (503, 408) or the close: drain what came; at EOF, connect again.
                    let n = buf.withUnsafeMutableBytes { recv(p.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                    if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) { close(p.fd); fds[i] = -1 }
                }
            }
        }

        /// Stops reconnecting, closes every socket, and returns how many connections were made.
        @discardableResult
        func stop() -> Int {
            stopping.store(true, ordering: .relaxed)
            done.wait()
            for fd in fds where fd >= 0 { close(fd) }
            fds = []
            return connects
        }

        static func connectTo(_ port: Int) -> Int32 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
            let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            if rc != 0 { close(fd); return -1 }
            return fd
        }
    }

    /// One probe of a normal client: a fresh connection, a complete GET /healthz; whether it was
    /// answered 200 within `limit` seconds.
    static func probe(port: Int, limit: Double = 1) -> Bool {
        let start = Date()
        guard let c = try? RawClient(port: port) else { return false }
        var tv = timeval(tv_sec: Int(limit), tv_usec: Int((limit - Double(Int(limit))) * 1e6))
        setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        c.send("GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        let r = c.responses(1).first
        return r?.status == 200 && Date().timeIntervalSince(start) <= limit
    }

    /// The attack, scaled down: more half-sent heads than the cap, reconnecting whenever
    /// closed, while a normal client asks every 100 ms. Before reclaiming, every probe got 503
    /// until the header timeout (10 s here); now at least 99 % are answered 200 within 1 s.
    @Test func normalClientServedDuringSlowlorisAttack() throws {
        let s = try server(maxConnections: 32)
        defer { s.shutdown() }
        let attack = Attack(port: s.port, count: 40)
        // The attack fills the cap first.
        let filled = Date().addingTimeInterval(2)
        while s.connectionCount < 32 && Date() < filled { usleep(10_000) }
        #expect(s.connectionCount >= 32, "the attack did not fill the cap")
        var answered = 0
        let probes = 30
        for _ in 0..<probes {
            let t0 = Date()
            if Self.probe(port: s.port) { answered += 1 }
            let left = 0.1 - Date().timeIntervalSince(t0)
            if left > 0 { usleep(UInt32(left * 1e6)) }
        }
        let connects = attack.stop()
        #expect(Double(answered) >= 0.99 * Double(probes), "answered 200 within 1 s: \(answered)/\(probes) (attack connections: \(connects), reclaimed: \(s.reclaimedCount))")
        #expect(s.reclaimedCount > 0)
    }

    /// A connection in the middle of a request (a long handler, a body being uploaded) is never
    /// reclaimed; the half-sent heads around it are, longest waiting first.
    @Test func requestsUnderWayAreNotReclaimed() throws {
        let s = try server(maxConnections: 4)
        defer { s.shutdown() }
        let handling = try RawClient(port: s.port)
        handling.send("GET /sleep HTTP/1.1\r\nHost: t\r\n\r\n")
        let uploading = try RawClient(port: s.port)
        uploading.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        usleep(100_000)
        // Two slots left: the first two heads fill them, and each later one reclaims the oldest.
        var heads: [RawClient] = []
        for _ in 0..<10 {
            let c = try RawClient(port: s.port)
            c.send(Self.partialHead)
            heads.append(c)
            usleep(10_000)
        }
        let settled = Date().addingTimeInterval(2)
        while s.reclaimedCount < 8 && Date() < settled { usleep(10_000) }
        #expect(s.reclaimedCount == 8)
        #expect(s.connectionCount == 4)
        uploading.send("defghij")
        let up = uploading.responses(1).first
        #expect(up?.status == 200 && up?.body == Array("abcdefghij".utf8))
        let slept = handling.responses(1).first
        #expect(slept?.status == 200 && slept?.body == Array("slept".utf8))
        // The oldest heads were closed (with a 503 once their bytes had been read; a connection
        // reclaimed before its first read is closed quietly), the two newest still wait.
        let first = heads[0].responses(1).first
        #expect(first == nil || (first?.status == 503 && first?.headers["connection"] == "close"))
        #expect(heads[0].isClosedByServer())
        for c in heads.suffix(2) {
            var tv = timeval(tv_sec: 0, tv_usec: 200_000)
            setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var b = [UInt8](repeating: 0, count: 16)
            let n = b.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, 0) }
            #expect(n < 0 && errno == EAGAIN, "a newest head was closed")
        }
        // Completing a waiting head is served as usual.
        heads[heads.count - 1].send("\r\n")
        #expect(heads[heads.count - 1].responses(1).first?.status == 404)
    }

    /// The victim is the longest waiting connection; 0 marks one that is not waiting.
    @Test func longestWaitingChoosesTheOldestWaiter() {
        let cases: [([(String, UInt64)], String?)] = [
            ([], nil),
            ([("a", 0), ("b", 0)], nil),
            ([("a", 5)], "a"),
            ([("a", 5), ("b", 3), ("c", 0), ("d", 4)], "b"),
            ([("a", 0), ("b", 9), ("c", 7)], "c"),
            ([("a", 1), ("b", .max - 1)], "a"),
        ]
        for (candidates, victim) in cases {
            #expect(HTTPServer.longestWaiting(candidates) == victim, "\(candidates)")
        }
    }
}
