import Dispatch
import Foundation
@testable import HTTP
import Testing

@Suite struct TokenBucketTests {
    @Test func fillsAtItsRateUpToCapacity() {
        var b = TokenBucket(rate: 0.1, capacity: 0.05, now: 0)
        #expect(b.wait(now: 0) == 0)
        b.charge(0.05, now: 0)                      // spends the whole burst
        #expect(b.wait(now: 0) == 0)                // at zero: not in debt
        b.charge(0.02, now: 0)
        #expect(abs(b.wait(now: 0) - 0.2) < 1e-12)  // 0.02 s of debt at 0.1 s/s
        #expect(abs(b.wait(now: 0.1) - 0.1) < 1e-12)
        #expect(b.wait(now: 0.2) == 0)
        _ = b.wait(now: 100)
        #expect(b.balance == 0.05)                  // never above capacity
    }

    @Test func chargesWhatWasSpentIntoDebtDownToAFloor() {
        var b = TokenBucket(rate: 1, capacity: 1, now: 10)
        b.charge(2.5, now: 10)
        #expect(b.balance == -1.5)
        #expect(b.wait(now: 11) == 0.5)
        b.charge(-3, now: 11)                       // a negative charge is ignored
        #expect(b.balance == -0.5)
        b.charge(100, now: 11)                      // never deeper than the longest wait
        #expect(b.balance == -TokenBucket.maxDebtSeconds && b.wait(now: 11) == TokenBucket.maxDebtSeconds)
        b.reset(now: 12)
        #expect(b.balance == 1 && b.wait(now: 12) == 0)
    }

    @Test func aClockGoingBackwardsAddsNothing() {
        var b = TokenBucket(rate: 1, capacity: 1, now: 10)
        b.charge(1, now: 10)
        #expect(b.wait(now: 5) == 0 && b.balance == 0)
    }
}

/// A server holding a CPU budget: requests that each burn CPU are slowed to the budget's rate
/// while it limits, none is lost, and nothing is slowed when it does not limit.
@Suite(.serialized) struct CPUBudgetLiveTests {
    static func burn(_ seconds: Double) {
        let start = CPUBudget.threadCPUTime()
        var x = 0.0
        while CPUBudget.threadCPUTime() - start < seconds { for i in 0..<1000 { x += Double(i).squareRoot() } }
        if x < 0 { print(x) }
    }

    func server(budget: CPUBudget) throws -> HTTPServer {
        var cfg = ServerConfiguration()
        cfg.port = 0
        cfg.shutdownGrace = 2
        cfg.cpuBudget = budget
        var router = Router()
        router.add("GET", "/burn") { _ in Self.burn(0.002); return HTTPResponse(contentType: "text/plain", text: "done") }
        let r = router
        let s = HTTPServer(configuration: cfg) { r.handle($0) }
        try s.start()
        return s
    }

    /// `clients` connections each send `count` requests one after another; returns the seconds taken
    /// and the number of 200 answers.
    func load(port: Int, clients: Int, count: Int) -> (seconds: Double, ok: Int) {
        let ok = Locked(0)
        let start = Date()
        DispatchQueue.concurrentPerform(iterations: clients) { _ in
            guard let c = try? RawClient(port: port) else { return }
            for _ in 0..<count {
                c.send("GET /burn HTTP/1.1\r\nHost: t\r\n\r\n")
                if c.responses(1).first?.status == 200 { ok.withLock { $0 += 1 } }
            }
        }
        return (Date().timeIntervalSince(start), ok.withLock { $0 })
    }

    @Test func limitsTheRateOfCPUHeavyRequests() throws {
        let budget = CPUBudget(share: 0.1)   // 100 ms of CPU per second, 50 ms burst
        budget.setLimited(true)
        let s = try server(budget: budget)
        defer { s.shutdown() }
        // 8 × 10 requests × 2 ms = 160 ms of CPU: at least (160 − 50) / 0.1 = 1.1 s.
        let limited = load(port: s.port, clients: 8, count: 10)
        #expect(limited.ok == 80)
        #expect(limited.seconds > 1.0, "took \(limited.seconds) s")
        #expect(limited.seconds < 5, "took \(limited.seconds) s")
        budget.setLimited(false)
        let free = load(port: s.port, clients: 8, count: 10)
        #expect(free.ok == 80)
        #expect(free.seconds < 0.8, "took \(free.seconds) s")
        print("CPU budget: limited \(limited.seconds) s, unlimited \(free.seconds) s")
    }

    /// Pipelined requests and a half-close while waiting for the budget: every request is answered.
    @Test func pipelinedAndHalfClosedWhileThrottled() throws {
        let budget = CPUBudget(share: 0.05)
        budget.setLimited(true)
        let s = try server(budget: budget)
        defer { s.shutdown() }
        let c = try RawClient(port: s.port)
        let start = Date()
        c.send(String(repeating: "GET /burn HTTP/1.1\r\nHost: t\r\n\r\n", count: 30))
        shutdown(c.fd, Int32(SHUT_WR))
        let r = c.responses(30)
        #expect(r.count == 30 && r.allSatisfy { $0.status == 200 })
        #expect(c.isClosedByServer())
        // 30 × 2 ms of CPU in one read are paced like separate requests: ≥ (60 − 25) / 0.05 = 0.7 s.
        let seconds = Date().timeIntervalSince(start)
        #expect(seconds > 0.6 && seconds < 5, "took \(seconds) s")
    }

    /// A file body is paced chunk by chunk while the budget limits, and arrives whole.
    @Test func fileBodiesArePaced() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("paced-\(UUID())").path
        let bytes = (0..<(8 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 13) }
        #expect(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        defer { unlink(path) }
        let budget = CPUBudget(share: 0.001)   // 1 ms of CPU per second
        var cfg = ServerConfiguration()
        cfg.port = 0
        cfg.shutdownGrace = 1
        cfg.idleTimeout = 0.5   // shorter than the paced download: holding the body back is no idle client
        cfg.cpuBudget = budget
        var router = Router()
        router.add("GET", "/file") { r in FileResponder.respond(path: path, request: r.head, etag: "x") }
        let r = router
        let s = HTTPServer(configuration: cfg) { r.handle($0) }
        try s.start()
        defer { s.shutdown() }
        func fetch() -> (Double, [UInt8]) {
            let start = Date()
            guard let c = try? RawClient(port: s.port) else { return (0, []) }
            c.send("GET /file HTTP/1.1\r\nHost: t\r\n\r\n")
            let body = c.responses(1).first?.body ?? []
            return (Date().timeIntervalSince(start), body)
        }
        let (free, a) = fetch()
        #expect(a.count == bytes.count)
        let sameA = a == bytes   // compared outside #expect: a failing #expect would diff 8 MB
        #expect(sameA)
        budget.setLimited(true)
        // 32 chunks of 256 KiB, each read and sent for tens of µs of CPU: well over the 0.5 ms burst.
        let (paced, b) = fetch()
        #expect(b.count == bytes.count)
        let sameB = b == bytes
        #expect(sameB)
        #expect(paced > 0.5 && paced > 4 * free, "paced \(paced) s, unlimited \(free) s")
        print("file body: unlimited \(free) s, paced \(paced) s")
    }
}

final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func withLock<R>(_ body: (inout Value) -> R) -> R { lock.lock(); defer { lock.unlock() }; return body(&value) }
}
