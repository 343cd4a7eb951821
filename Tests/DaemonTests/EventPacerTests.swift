@testable import Daemon
import Testing

/// The event stream's pacing without sockets: each row is a script of steps at given times (in
/// seconds), written short: `m1` a metric event with step 1, `l1` a log line, `s` a state event,
/// `S` a terminal one, `c` a checkpoint, `x` shutdown; `.` a tick with no event. Each step's
/// action is `-` (wait), `hb` (heartbeat) or the events written together, as in `m1 m2 s`.
@Suite struct EventPacerTests {
    static func event(_ s: Substring) -> JobStreamEvent {
        switch s.first {
        case "m": JobStreamEvent(name: .metric, json: "{\"step\":\(s.dropFirst())}")
        case "l": .log(String(s))
        case "s": .state(.paused, reason: "asked")
        case "S": .state(.succeeded, reason: "done")
        case "c": JobStreamEvent(name: .checkpoint, json: "{}")
        default: .shutdown
        }
    }

    static func short(_ e: JobStreamEvent) -> String {
        switch e.name {
        case .metric: "m" + e.json.dropFirst(8).dropLast()
        case .log: "l" + (e.json.split(separator: "\"")[3].dropFirst())
        case .state: e.state?.isTerminal == true ? "S" : "s"
        case .checkpoint: "c"
        case .shutdown: "x"
        default: "?"
        }
    }

    static func short(_ a: EventPacer.Action) -> String {
        switch a {
        case .wait: "-"
        case .heartbeat: "hb"
        case .write(let events): events.map(short).joined(separator: " ")
        }
    }

    /// (interval, [(time, step, expected action)])
    static let rows: [(String, Double, [(Double, String, String)])] = [
        ("no interval: every event as it comes", 0, [(0, "m1", "m1"), (0.1, "m2", "m2"), (0.1, "s", "s"), (0.2, "l3", "l3")]),
        ("the first metric goes at once, the next are held until the interval is up", 1, [
            (0, "m1", "m1"), (0.3, "m2", "-"), (0.6, "m3", "-"), (0.9, ".", "-"), (1.0, ".", "m2 m3"), (1.2, "m4", "-"), (2.0, ".", "m4"),
        ]),
        ("events coming faster than the interval still go out once an interval", 1, [
            (0, "m1", "m1"), (0.4, "m2", "-"), (0.8, "m3", "-"), (1.2, "m4", "m2 m3 m4"), (1.6, "m5", "-"), (2.0, ".", "-"), (2.2, ".", "m5"),
        ]),
        ("a metric after a quiet interval goes at once", 1, [(0, "m1", "m1"), (5, "m2", "m2"), (5.5, "m3", "-"), (6, ".", "m3")]),
        ("log lines are held like metrics, in order with them", 2, [(0, "m1", "m1"), (0.5, "l1", "-"), (1, "m2", "-"), (2, ".", "l1 m2")]),
        ("a state event lets the held ones out before it", 1, [(0, "m1", "m1"), (0.2, "m2", "-"), (0.4, "l2", "-"), (0.5, "s", "m2 l2 s"), (0.7, "m3", "-"), (1.5, ".", "m3")]),
        ("a checkpoint goes at once, and so does a metric held with nothing", 1, [(0, "c", "c"), (0.1, "m1", "-"), (1.1, ".", "m1")]),
        ("the job's end and shutdown flush what is held", 1, [(0, "m1", "m1"), (0.5, "m2", "-"), (0.6, "S", "m2 S")]),
        ("shutdown flushes too", 1, [(0, "m1", "m1"), (0.5, "l9", "-"), (0.6, "x", "l9 x")]),
        ("a heartbeat after 15 s with nothing written", 1, [(0, "m1", "m1"), (14.9, ".", "-"), (15, ".", "hb"), (29, ".", "-"), (30, ".", "hb")]),
        ("held events are not a heartbeat", 1, [(0, "m1", "m1"), (0.5, "m2", "-"), (1, ".", "m2"), (15.9, ".", "-"), (16, ".", "hb")]),
    ]

    @Test(arguments: rows.indices) func row(_ i: Int) {
        let (name, interval, steps) = Self.rows[i]
        var pacer = EventPacer(interval: interval, now: 0)
        for (t, step, expected) in steps {
            let action = step == "." ? pacer.tick(now: t) : pacer.received(Self.event(Substring(step)), now: t)
            #expect(Self.short(action) == expected, "\(name): at \(t) s, \(step)")
        }
    }

    /// The stream sleeps until the held events fall due, or until its next heartbeat.
    @Test func waitsUntilTheNextDuty() {
        var pacer = EventPacer(interval: 2, now: 0)
        #expect(pacer.wait(now: 0) == 15)
        _ = pacer.received(Self.event("m1"), now: 1)
        #expect(pacer.wait(now: 1) == 15)
        _ = pacer.received(Self.event("m2"), now: 1.5)
        #expect(pacer.wait(now: 1.5) == 1.5)
        #expect(pacer.wait(now: 4) == 0)
        #expect(Self.short(pacer.tick(now: 4)) == "m2" && pacer.wait(now: 4) == 15)
    }
}
