@testable import HTTP
import Testing

/// The connection's rules without sockets: each row is a script of events at given times (in
/// milliseconds) and the actions each event must produce, written short:
/// `ask` (ask the CPU budget), `100` (continue), `respond GET /a keep|close <body>`,
/// `reject 408`, `refuse`, `readmit`, `log timeout head`, `close`.
@Suite struct ConnectionMachineTests {
    typealias Event = ConnectionMachine.Event
    static let timeouts = ConnectionMachine.Timeouts(header: 0.010, body: 0.005, idle: 0.060)   // 10, 5 and 60 ms
    static let ms: UInt64 = 1_000_000

    static func short(_ a: ConnectionMachine.Action) -> String {
        switch a {
        case .askTurn: "ask"
        case .sendContinue: "100"
        case .respond(let h, let body, let keepAlive):
            "respond \(h.method) \(h.target) \(keepAlive ? "keep" : "close")" + (body.isEmpty ? "" : " " + String(decoding: body, as: UTF8.self))
        case .reject(let s, _): "reject \(s.code)"
        case .refuse: "refuse"
        case .readmit: "readmit"
        case .log(.rejected(let s, _)): "log rejected \(s.code)"
        case .log(.timedOut(let phase)): "log timeout \(phase)"
        case .log(.reclaimed(let phase)): "log reclaimed \(phase)"
        case .close: "close"
        }
    }

    static func input(_ s: String) -> Event { .input(ArraySlice(s.utf8)) }

    /// A connection accepted at 0 and started.
    static func started() -> ConnectionMachine {
        var m = ConnectionMachine(limits: HTTPLimits(), timeouts: timeouts, now: 0)
        #expect(m.handle(.started, now: 0) == [])
        return m
    }

    /// Runs `(time in ms, event, expected actions)` rows; returns the machine for further checks.
    @discardableResult
    static func run(_ script: [(UInt64, Event, [String])], sourceLocation: SourceLocation = #_sourceLocation) -> ConnectionMachine {
        var m = started()
        for (i, (t, event, expected)) in script.enumerated() {
            let got = m.handle(event, now: t * ms).map(short)
            #expect(got == expected, "step \(i): \(event)", sourceLocation: sourceLocation)
        }
        return m
    }

    static let get = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    static let getB = "GET /b HTTP/1.1\r\nHost: x\r\n\r\n"

    @Test func aRequestIsAnsweredAndTheConnectionKeptAlive() {
        let m = Self.run([
            (1, Self.input(Self.get), ["ask"]),
            (1, .turn(wait: 0), ["respond GET /a keep"]),
            (2, .responseSent, []),
        ])
        #expect(m.phase == .idle)
        #expect(m.deadline == 2 * Self.ms + Self.timeouts.idle)
        #expect(m.isReclaimable && m.waitingSince == 2 * Self.ms)
    }

    @Test func pipelinedRequestsGoOneAtATimeInOrder() {
        let m = Self.run([
            (1, Self.input(Self.get + Self.getB), ["ask"]),
            (1, .turn(wait: 0), ["respond GET /a keep"]),
            (1, Self.input("GET /c HTTP/1.1\r\nHost: x\r\n\r\n"), []),   // buffered while /a is written
            (2, .responseSent, ["ask"]),                                  // each request asks the budget
            (2, .turn(wait: 0), ["respond GET /b keep"]),
            (3, .responseSent, ["ask"]),
            (3, .turn(wait: 0), ["respond GET /c keep"]),
        ])
        #expect(m.phase == .responding && m.deadline == nil && !m.isReclaimable && m.waitingSince == nil)
    }

    @Test func aPipelinedHalfHeadGetsTheHeaderTimeoutNotTheIdleOne() {
        let m = Self.run([
            (1, Self.input(Self.get + "GET /b HT"), ["ask"]),
            (1, .turn(wait: 0), ["respond GET /a keep"]),
            (4, .responseSent, ["ask"]),
            (4, .turn(wait: 0), []),
            (13, .clock, []),
            (14, .clock, ["log timeout head", "reject 408"]),
            (15, .responseSent, ["close"]),
        ])
        #expect(m.isClosed)
    }

    @Test func deadlinesOfEachPhase() {
        // The head's deadline runs from its first byte; a body's from its last read; idle from the last response.
        Self.run([
            (0, Self.input("GET /a"), ["ask"]),
            (0, .turn(wait: 0), []),
            (9, Self.input(" HTTP/1.1\r\n"), []),         // more of the head does not extend it
            (10, .clock, ["log timeout head", "reject 408"]),
        ])
        Self.run([
            (0, Self.input("POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab"), ["ask"]),
            (0, .turn(wait: 0), []),
            (4, Self.input("c"), []),
            (8, .clock, []),                                  // 5 ms from the last read, not the first
            (9, .clock, ["log timeout body", "reject 408"]),
        ])
        Self.run([
            (59, .clock, []),
            (60, .clock, ["close"]),                          // idle: closed without an answer
        ])
        // A client that stops reading its response is dropped after the idle timeout.
        Self.run([
            (0, Self.input(Self.get), ["ask"]),
            (0, .turn(wait: 0), ["respond GET /a keep"]),
            (1, .writeBlocked, []),
            (60, .clock, []),
            (61, .clock, ["close"]),
        ])
        // A file body the budget holds back has no deadline.
        let m = Self.run([
            (0, Self.input(Self.get), ["ask"]),
            (0, .turn(wait: 0), ["respond GET /a keep"]),
            (1, .writeBlocked, []),
            (2, .bodyHeld, []),
            (1000, .clock, []),
        ])
        #expect(m.deadline == nil && m.phase == .responding)
    }

    @Test func closeAfterTheResponseWhenTheRequestAsks() {
        Self.run([
            (0, Self.input("GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + Self.getB), ["ask"]),
            (0, .turn(wait: 0), ["respond GET /a close"]),
            (1, .responseSent, ["close"]),                    // /b is never read
        ])
        Self.run([
            (0, Self.input("GET /a HTTP/1.0\r\n\r\n"), ["ask"]),
            (0, .turn(wait: 0), ["respond GET /a close"]),
            (1, .responseSent, ["close"]),
        ])
        // The shell could not send the body its head promised.
        Self.run([
            (0, Self.input(Self.get + Self.getB), ["ask"]),
            (0, .turn(wait: 0), ["respond GET /a keep"]),
            (0, .responseBroken, []),
            (1, .responseSent, ["close"]),
        ])
    }

    @Test func malformedRequestsAreRejectedThenClosed() {
        Self.run([
            (0, Self.input("GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), ["ask"]),
            (0, .turn(wait: 0), ["log rejected 400", "reject 400"]),
            (0, Self.input(Self.get), []),                    // nothing more is read into a request
            (1, .responseSent, ["close"]),
        ])
        Self.run([
            (0, Self.input("GET /a HTTP/2.0\r\n\r\n"), ["ask"]),
            (0, .turn(wait: 0), ["log rejected 505", "reject 505"]),
        ])
    }

    @Test func expectContinueIsAnsweredBeforeTheBody() {
        Self.run([
            (0, Self.input("POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"), ["ask"]),
            (0, .turn(wait: 0), ["100"]),
            (1, Self.input("abc"), ["respond POST /p keep abc"]),
        ])
    }

    @Test func aHalfClosedClientGetsItsCompleteRequestsAnswered() {
        let m = Self.run([
            (0, Self.input(Self.get + Self.getB + "GET /c"), ["ask"]),
            (0, .inputEnded, []),                             // the ask is out: wait for its answer
            (0, .turn(wait: 0), ["respond GET /a keep"]),
            (1, .responseSent, ["ask"]),
            (1, .turn(wait: 0), ["respond GET /b keep"]),
            (2, .responseSent, ["ask"]),
            (2, .turn(wait: 0), ["close"]),                   // the half request can never complete
        ])
        #expect(!m.wantsInput)
        Self.run([(5, .inputEnded, ["close"])])              // idle: nothing to answer
        Self.run([
            (0, Self.input(Self.get), ["ask"]),
            (0, .turn(wait: 0), ["respond GET /a keep"]),
            (1, .inputEnded, []),
            (2, .responseSent, ["close"]),
        ])
    }

    @Test func aStreamEndsWhenItsClientGoesAway() {
        Self.run([
            (0, Self.input(Self.get), ["ask"]),
            (0, .turn(wait: 0), ["respond GET /a keep"]),
            (0, .streamStarted, []),
            (5000, .clock, []),                               // a stream has no deadline
            (6000, .inputEnded, ["close"]),
        ])
    }

    @Test func waitingForTheBudgetStopsReadingAndTheHeadsClock() {
        var m = Self.run([
            (0, Self.input("GET /a HTTP/1.1\r\n"), ["ask"]),
            (4, .turn(wait: 0.5), []),
        ])
        #expect(!m.wantsInput && m.deadline == nil && !m.isReclaimable)
        #expect(m.handle(.clock, now: 400 * Self.ms) == [])
        #expect(m.handle(.turnCame, now: 500 * Self.ms) == [])
        #expect(m.wantsInput && m.deadline == (500 + 6) * Self.ms)   // the 6 ms that were left
        #expect(m.handle(.input(ArraySlice("Host: x\r\n".utf8)), now: 501 * Self.ms) == [])   // granted: no second ask
        #expect(m.handle(.input(ArraySlice("\r\n".utf8)), now: 502 * Self.ms).map(Self.short) == ["respond GET /a keep"])
        // The grant is spent by that head: the next request asks again.
        #expect(m.handle(.input(ArraySlice(Self.getB.utf8)), now: 503 * Self.ms) == [])
        #expect(m.handle(.responseSent, now: 504 * Self.ms) == [.askTurn])
    }

    @Test func reclaimingAtTheCap() {
        let idle = Self.run([(1, .reclaim, ["log reclaimed idle", "close"])])
        #expect(idle.isClosed && idle.waitingSince == nil)
        Self.run([
            (0, Self.input("GET /a HT"), ["ask"]),
            (0, .turn(wait: 0), []),
            (1, .reclaim, ["refuse", "log reclaimed head", "close"]),
        ])
        // Under way by the time the connection looks: the server takes it back.
        Self.run([
            (0, Self.input(Self.get), ["ask"]),
            (0, .turn(wait: 0), ["respond GET /a keep"]),
            (1, .reclaim, ["readmit"]),
            (2, .responseSent, []),
        ])
        Self.run([
            (0, Self.input("GET /a HT"), ["ask"]),
            (0, .turn(wait: 1), []),
            (1, .reclaim, ["readmit"]),                        // may hold a complete request
        ])
        Self.run([
            (0, Self.input("POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab"), ["ask"]),
            (0, .turn(wait: 0), []),
            (1, .reclaim, ["readmit"]),                        // a head is parsed: a request is under way
        ])
    }

    @Test func waitingSinceFollowsReclaimability() {
        var m = ConnectionMachine(limits: HTTPLimits(), timeouts: Self.timeouts, now: 7)
        #expect(m.waitingSince == 7)                           // from the accept, before it starts
        _ = m.handle(.started, now: 9)
        _ = m.handle(.input(ArraySlice("GET /a".utf8)), now: 10)
        _ = m.handle(.turn(wait: 0), now: 10)
        #expect(m.waitingSince == 7)                           // part of a head: still only waiting
        _ = m.handle(.input(ArraySlice(" HTTP/1.1\r\nHost: x\r\n\r\n".utf8)), now: 11)
        #expect(m.waitingSince == nil)
        _ = m.handle(.responseSent, now: 12)
        #expect(m.waitingSince == 12)
    }

    @Test func shutdownClosesIdleConnectionsAndLetsRequestsFinish() {
        Self.run([(1, .shutdown, ["close"])])
        Self.run([
            (0, Self.input("GET /a HT"), ["ask"]),
            (0, .turn(wait: 0), []),
            (1, .shutdown, ["close"]),                         // part of a head: nothing lost
        ])
        Self.run([
            (0, Self.input(Self.get + Self.getB), ["ask"]),
            (0, .turn(wait: 0), ["respond GET /a keep"]),
            (1, .shutdown, []),
            (2, .responseSent, ["close"]),
        ])
        Self.run([
            (0, Self.input(Self.get), ["ask"]),
            (0, .turn(wait: 1), []),
            (1, .shutdown, []),                                // waiting: it holds a request
            (1000, .turnCame, ["respond GET /a close"]),
            (1001, .responseSent, ["close"]),
        ])
    }

    @Test func afterCloseNothingHappens() {
        var m = Self.run([(1, .forceClose, ["close"])])
        for event: Event in [.input(ArraySlice(Self.get.utf8)), .inputEnded, .clock, .responseSent, .shutdown, .reclaim, .forceClose, .socketFailed, .turnCame] {
            #expect(m.handle(event, now: 100 * Self.ms) == [])
        }
        #expect(m.deadline == nil && !m.wantsInput)
    }

    /// Whatever the split of the bytes, the same requests are answered in the same order.
    @Test func theSplitOfTheInputDoesNotMatter() {
        let text = Self.get + "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz" + Self.getB
        let bytes = Array(text.utf8)
        func answers(_ cuts: [Int]) -> [String] {
            var m = Self.started()
            var out: [String] = []
            var pending: [ConnectionMachine.Action] = []
            func step(_ e: Event) {
                pending += m.handle(e, now: 1)
                while !pending.isEmpty {
                    let a = pending.removeFirst()
                    switch a {
                    case .askTurn: pending += m.handle(.turn(wait: 0), now: 1)
                    case .respond: out.append(Self.short(a)); pending += m.handle(.responseSent, now: 1)
                    default: out.append(Self.short(a))
                    }
                }
            }
            var from = 0
            for cut in cuts + [bytes.count] where cut > from {
                step(.input(bytes[from..<cut]))
                from = cut
            }
            return out
        }
        let whole = answers([])
        #expect(whole == ["respond GET /a keep", "respond POST /p keep xyz", "respond GET /b keep"])
        for size in 1...9 {
            #expect(answers(Array(stride(from: size, to: bytes.count, by: size))) == whole, "pieces of \(size)")
        }
    }
}

@Suite struct PacerTests {
    @Test func turnsEndOnA50MsGridAndWithinTwoSeconds() {
        let ms: UInt64 = 1_000_000
        #expect(Pacer.turnEnds(now: 1000 * ms, wait: 0.001) == 1050 * ms)
        #expect(Pacer.turnEnds(now: 1000 * ms, wait: 0.05) == 1050 * ms)
        #expect(Pacer.turnEnds(now: 1010 * ms, wait: 0.05) == 1100 * ms)
        #expect(Pacer.turnEnds(now: 1000 * ms, wait: 30) == 3000 * ms)
    }

    @Test func withoutABudgetEverythingGoesAtOnce() {
        var p = Pacer(budget: nil)
        p.beginEvent()
        #expect(p.turn(now: 0) == nil)
        #expect(p.bodyChunk() == .send)
        p.endEvent()
        var q = Pacer(budget: CPUBudget(share: 0.1))    // a budget that is not limiting
        #expect(q.turn(now: 0) == nil)
        #expect(q.bodyChunk() == .send)
    }

    @Test func aBudgetInDebtHoldsABodyThenLetsAChunkGo() {
        let budget = CPUBudget(share: 0.01)
        budget.setLimited(true)
        budget.charge(0.05)                              // far past the 5 ms burst
        var p = Pacer(budget: budget)
        guard case .hold(let s) = p.bodyChunk() else { Issue.record("not held"); return }
        #expect(s > 0 && s <= 2)
        #expect(p.bodyChunk() == .holding)
        p.bodyHoldEnded()
        #expect(p.bodyChunk() == .send)                  // the hold's own cost buys no second hold
        if case .hold = p.bodyChunk() {} else { Issue.record("the debt is still there: the next chunk is held") }
        let turn = p.turn(now: 1_000_000_000)
        #expect(turn != nil && turn!.until % 50_000_000 == 0 && turn!.reserved > 0)
    }
}
