import Foundation
import GRDB
@testable import Jobs
import Testing

@Suite struct LifecycleTests {
    /// Every (state, event) pair: the allowed ones move, the rest are refused.
    @Test func stateMachineTable() {
        let allowed: [JobState: [JobEvent: JobState]] = [
            .queued: [.start: .running, .cancel: .cancelled, .fail: .failed, .pause: .paused],
            .running: [.finish: .succeeded, .fail: .failed, .cancel: .cancelled, .pause: .paused, .interrupt: .queued],
            .paused: [.resume: .queued, .cancel: .cancelled],
            .succeeded: [:], .failed: [:], .cancelled: [:],
        ]
        let events: [JobEvent] = [.start, .finish, .fail, .cancel, .pause, .resume, .interrupt]
        for state in JobState.allCases {
            for event in events {
                switch Lifecycle.next(state, event) {
                case .success(let next): #expect(allowed[state]?[event] == next, "\(state) + \(event)")
                case .failure(let e):
                    #expect(allowed[state]?[event] == nil, "\(state) + \(event)")
                    #expect(e.code == .invalidState)
                }
            }
        }
        #expect(JobState.allCases.filter(\.isTerminal) == [.succeeded, .failed, .cancelled])
    }
}

@Suite struct StoreTests {
    func store() throws -> (JobStore, String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("store-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return (try JobStore(path: dir.appendingPathComponent("mocod.sqlite").path), dir.path)
    }

    @Test func migratesFromEmpty() throws {
        let (s, dir) = try store()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tables = try s.pool.read { try String.fetchAll($0, sql: "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name") }
        #expect(Set(tables).isSuperset(of: ["jobs", "transitions", "metric_points", "checkpoints", "health", "grdb_migrations"]))
        let applied = try s.pool.read { try JobStore.migrator.appliedMigrations($0) }
        #expect(applied == ["v1-jobs", "v2-health", "v3-restarts", "v4-reason", "v5-kinds"])
        // The health probe is a real write: it moves the generation and leaves no failure behind.
        let before = s.generation
        try s.probeWrite()
        #expect(s.generation == before + 1 && s.writeFailure == nil)
        let mode = try s.pool.read { try String.fetchOne($0, sql: "PRAGMA journal_mode") }
        #expect(mode == "wal")
        // Opening again migrates nothing and keeps data.
        _ = try s.create(JobRecord(id: "a", name: "a", spec: "{}"))
        let again = try JobStore(path: dir + "/mocod.sqlite")
        #expect(try again.job("a") != nil)
    }

    @Test func transitionsAreRecordedWithReasons() throws {
        let (s, dir) = try store()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try s.create(JobRecord(id: "j1", name: "one", spec: "{}"))
        try s.apply(.start, to: "j1", reason: "scheduled")
        try s.apply(.pause, to: "j1", reason: "user")
        #expect(throws: JobError.self) { try s.apply(.finish, to: "j1", reason: "x") }
        try s.apply(.resume, to: "j1", reason: "user")
        try s.apply(.start, to: "j1", reason: "scheduled")
        let done = try s.apply(.finish, to: "j1", reason: "last epoch")
        #expect(done.state == .succeeded && done.finishedAt != nil && done.startedAt != nil)
        let t = try s.transitions("j1")
        #expect(t.map(\.to) == [.queued, .running, .paused, .queued, .running, .succeeded])
        #expect(t.map(\.reason) == ["submitted", "scheduled", "user", "user", "scheduled", "last epoch"])
        #expect(try done.reason == "last epoch" && s.job("j1")?.reason == "last epoch")
        #expect(done.failureReason == nil)
        #expect(throws: JobError.self) { try s.apply(.start, to: "missing", reason: "x") }
        #expect(try s.create(JobRecord(id: "j2", name: "two", spec: "{}")).job.reason == "submitted")
        let failed = try s.apply(.fail, to: "j2", reason: "bad data")
        #expect(failed.reason == "bad data" && failed.failureReason == "bad data")
    }

    /// A store written before jobs carried their reason gets each job's latest transition's reason.
    @Test func reasonsAreBackfilledFromTransitions() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("store-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("mocod.sqlite").path
        let old = try DatabaseQueue(path: path)
        try JobStore.migrator.migrate(old, upTo: "v3-restarts")
        try old.write { db in
            for (id, state) in [("a", "cancelled"), ("b", "queued")] {
                try db.execute(sql: "INSERT INTO jobs (id, seq, name, spec, state, createdAt) VALUES (?, ?, ?, '{}', ?, ?)",
                               arguments: [id, id == "a" ? 1 : 2, id, state, Date()])
            }
            for (id, to, reason) in [("a", "queued", "submitted"), ("a", "cancelled", "cancelled by request"), ("b", "queued", "submitted")] {
                try db.execute(sql: "INSERT INTO transitions (jobId, \"to\", at, reason) VALUES (?, ?, ?, ?)", arguments: [id, to, Date(), reason])
            }
        }
        try old.close()
        let s = try JobStore(path: path)
        #expect(try s.job("a")?.reason == "cancelled by request")
        #expect(try s.job("b")?.reason == "submitted")
    }

    @Test func idempotencyKeys() throws {
        let (s, dir) = try store()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = try s.create(JobRecord(id: "a", name: "a", spec: "{}", idempotencyKey: "k1", bodyHash: "h1"))
        #expect(first.created)
        let again = try s.create(JobRecord(id: "b", name: "b", spec: "{}", idempotencyKey: "k1", bodyHash: "h1"))
        #expect(!again.created && again.job.id == "a")
        #expect(throws: JobError.self) { try s.create(JobRecord(id: "c", name: "c", spec: "{}", idempotencyKey: "k1", bodyHash: "h2")) }
        #expect(try s.jobs().count == 1)
    }

    @Test func queueOrderAndPaging() throws {
        let (s, dir) = try store()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (i, p) in [0, 5, 0, 5].enumerated() { _ = try s.create(JobRecord(id: "j\(i)", name: "\(i)", spec: "{}", priority: p)) }
        #expect(try s.nextQueued()?.id == "j1")   // highest priority, earliest
        try s.apply(.start, to: "j1", reason: "x")
        #expect(try s.nextQueued()?.id == "j3")
        let page1 = try s.jobs(limit: 2)
        #expect(page1.map(\.id) == ["j3", "j2"])
        #expect(try s.jobs(limit: 2, before: page1.last!.seq).map(\.id) == ["j1", "j0"])
        #expect(try s.jobs(state: .running).map(\.id) == ["j1"])
    }

    @Test func metricsAndCheckpoints() throws {
        let (s, dir) = try store()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try s.create(JobRecord(id: "j", name: "j", spec: "{}"))
        try s.appendMetrics((1...5).map { MetricRecord(jobId: "j", step: $0, kind: "step", json: "{\"step\":\($0)}") })
        try s.appendMetrics([MetricRecord(jobId: "j", step: 5, kind: "eval", json: "{}")])
        #expect(try s.metrics("j").count == 6)
        #expect(try s.metrics("j", afterStep: 3).map(\.step) == [4, 5, 5])
        try s.recordCheckpoint(CheckpointRecord(jobId: "j", name: "c1", epoch: 1, step: 5, bytes: 10, sha256: "ab", createdAt: Date(), knnTop1: nil))
        #expect(try s.checkpoints("j").map(\.name) == ["c1"])
        try s.delete("j")
        #expect(try s.metrics("j").isEmpty && s.checkpoints("j").isEmpty)   // cascades
    }

    /// Every write moves the generation (readers cache by it); reads and failed lookups do not.
    /// A write the disk refuses (SQLite's page limit stands in for a full disk) is a
    /// `JobError(.storage)` with a short reason and no SQLite text or path; `writeFailure` says
    /// so until a write succeeds again.
    @Test func storageFailuresAreTypedAndCleared() throws {
        let (s, dir) = try store()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try s.create(JobRecord(id: "j", name: "j", spec: "{}"))
        let pages = try s.pool.write { try Int.fetchOne($0, sql: "PRAGMA page_count") ?? 1 }
        try s.pool.writeWithoutTransaction { try $0.execute(sql: "PRAGMA max_page_count = \(pages)") }
        do {
            _ = try s.create(JobRecord(id: "big", name: "big", spec: String(repeating: "x", count: 200_000)))
            Issue.record("the write should have failed")
        } catch let e as JobError {
            #expect(e.code == .storage && e.message.contains("disk is full") && !e.message.contains(dir), "\(e)")
        }
        #expect(s.writeFailure?.contains("disk is full") == true)
        #expect(try s.job("big") == nil && s.job("j") != nil)   // reads still work; nothing half-written
        try s.pool.writeWithoutTransaction { try $0.execute(sql: "PRAGMA max_page_count = 1073741823") }
        try s.probeWrite()
        #expect(s.writeFailure == nil)
    }

    @Test func generationMovesWithEveryWrite() throws {
        let (s, dir) = try store()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var last = s.generation
        func moved() -> Bool { defer { last = s.generation }; return s.generation > last }
        _ = try s.create(JobRecord(id: "j", name: "j", spec: "{}"))
        #expect(moved())
        _ = try s.job("j"); _ = try s.jobs(); _ = try s.metrics("j"); _ = try s.checkpoints("j")
        #expect(!moved())
        try s.apply(.start, to: "j", reason: "test")
        #expect(moved())
        try s.updateProgress("j") { $0.step = 3 }
        #expect(moved())
        try s.appendMetrics([MetricRecord(jobId: "j", step: 1, kind: "step", json: "{}")])
        #expect(moved())
        try s.recordCheckpoint(CheckpointRecord(jobId: "j", name: "c", epoch: 0, step: 1, bytes: 1, sha256: "a", createdAt: Date(), knnTop1: nil))
        #expect(moved())
        try s.removeCheckpoint(job: "j", name: "c")
        #expect(moved())
        try s.delete("j")
        #expect(moved())
    }
}

/// The supervisor's decision when a worker ends, as a table.
@Suite struct SupervisionTests {
    @Test(arguments: [
        (WorkerEnd.finished, nil, false, 0, 2, Supervision.Decision.end(.finish, reason: "finished all epochs")),
        (.failed("loss became nan"), nil, false, 0, 2, .end(.fail, reason: "loss became nan")),
        (.stopped, .pause, false, 0, 2, .end(.pause, reason: "pause by request; checkpointed")),
        (.stopped, .cancel, false, 1, 2, .end(.cancel, reason: "cancel by request; checkpointed")),
        (.stopped, .interrupt, false, 0, 2, .end(.interrupt, reason: "daemon stopping; checkpointed")),
        (.stopped, nil, false, 0, 2, .end(.interrupt, reason: "stopped")),
        (.abnormal("killed by signal 9"), nil, false, 0, 2, .restart(attempt: 1)),
        (.abnormal("killed by signal 9"), nil, false, 1, 2, .restart(attempt: 2)),
        (.abnormal("killed by signal 9"), nil, false, 2, 2, .end(.fail, reason: "worker killed by signal 9 (after 2 restarts)")),
        (.abnormal("exited with status 1"), nil, false, 0, 0, .end(.fail, reason: "worker exited with status 1")),
        (.abnormal("killed by signal 9"), nil, true, 0, 2, .end(.fail, reason: "worker killed by signal 9")),
        (.abnormal("killed by signal 15"), .interrupt, false, 0, 2, .end(.interrupt, reason: "daemon stopping; worker ended: killed by signal 15")),
        (.abnormal("killed by signal 9"), .cancel, false, 0, 2, .end(.cancel, reason: "cancel by request; worker ended: killed by signal 9")),
        (.failed("disk full"), .pause, true, 0, 2, .end(.fail, reason: "disk full")),
    ] as [(WorkerEnd, JobEvent?, Bool, Int, Int, Supervision.Decision)])
    func decisions(_ end: WorkerEnd, _ stop: JobEvent?, _ faulted: Bool, _ restarts: Int, _ max: Int, _ expected: Supervision.Decision) {
        #expect(Supervision.decide(end, stopRequest: stop, faulted: faulted, restarts: restarts, maxRestarts: max) == expected)
    }

    /// Cores are taken lowest first, only when enough are free, and come back.
    @Test func corePool() {
        var pool = CorePool(cores: [3, 1, 2, 0])
        #expect(pool.take(2) == [0, 1] && pool.free == [2, 3])
        #expect(pool.take(3) == nil && pool.free == [2, 3])
        #expect(pool.take(0) == nil)
        #expect(pool.take(1) == [2])
        pool.give([0, 1])
        #expect(pool.free == [0, 1, 3])
        pool.give([1, 7])   // already free, not in the pool: ignored
        #expect(pool.free == [0, 1, 3])
        #expect(pool.take(3) == [0, 1, 3] && pool.free.isEmpty)
    }
}

/// MPI hostfiles and slot counting, as pure values.
@Suite struct SlotTests {
    @Test(arguments: [
        ("localhost slots=2\n", [HostSlots(host: "localhost", slots: 2)]),
        ("# cluster\nnode1 slots=4 max_slots=8\n\nnode2   slots=2 # spare\n", [HostSlots(host: "node1", slots: 4), HostSlots(host: "node2", slots: 2)]),
        ("a slots=1\nb slots=2\na slots=3\n", [HostSlots(host: "a", slots: 4), HostSlots(host: "b", slots: 2)]),
        ("10.0.0.7 slots=2\r\n", [HostSlots(host: "10.0.0.7", slots: 2)]),
    ])
    func hostfilesParse(_ text: String, _ hosts: [HostSlots]) throws {
        #expect(try Hostfile.parse(text) == hosts)
    }

    @Test(arguments: [
        ("node1\n", "hostfile line 1: node1 has no slots=N (mocod places ranks by slot counts)"),
        ("node1 slots=0\n", "hostfile line 1: slots must be a whole number from 1 to 4096"),
        ("a slots=1\nnode1 slots=two\n", "hostfile line 2: slots must be a whole number from 1 to 4096"),
        ("node1 cpus=2\n", "hostfile line 1: unknown key \"cpus\" (slots and max_slots are known)"),
        ("node1 2\n", "hostfile line 1: \"2\" is not key=value"),
        ("# nothing\n\n", "hostfile line 0: names no host"),
        ("no/de slots=1\n", "hostfile line 1: \"no/de\" is not a host name or address"),
        ("fe80::1 slots=1\n", "hostfile line 1: \"fe80::1\" is not a host name or address"),
    ])
    func badHostfilesSayWhere(_ text: String, _ message: String) {
        #expect(throws: Hostfile.Problem.self) { try Hostfile.parse(text) }
        do { _ = try Hostfile.parse(text) } catch { #expect(error.description == message) }
    }

    /// Slots are taken host by host in order, one on the first host (rank 0's) always, only
    /// when enough are free, and come back.
    @Test func slotPool() {
        var pool = SlotPool(hosts: [HostSlots(host: "a", slots: 2), HostSlots(host: "b", slots: 3)])
        #expect(pool.total == 5)
        #expect(pool.take(3) == [HostSlots(host: "a", slots: 2), HostSlots(host: "b", slots: 1)] && pool.free == [0, 2])
        #expect(pool.take(2) == nil && pool.free == [0, 2], "b has 2 free, but rank 0 runs on a, which has none")
        #expect(pool.take(0) == nil)
        pool.give([HostSlots(host: "a", slots: 1), HostSlots(host: "z", slots: 9)])   // z: not in the pool
        #expect(pool.free == [1, 2])
        #expect(pool.take(4) == nil, "4 > 3 free")
        #expect(pool.take(3) == [HostSlots(host: "a", slots: 1), HostSlots(host: "b", slots: 2)] && pool.freeCount == 0)
        pool.give([HostSlots(host: "a", slots: 5)])   // never above a host's slots
        #expect(pool.free == [2, 0])
        #expect(HostSlots.hostList([HostSlots(host: "a", slots: 2), HostSlots(host: "b", slots: 1)]) == "a:2,b:1")
    }

    /// Slots held by running distributed jobs never exceed a host's count, and all come back.
    @Test func slotsNeverOverbooked() {
        var rng = SystemRandomNumberGenerator()
        let hosts = [HostSlots(host: "a", slots: 2), HostSlots(host: "b", slots: 3), HostSlots(host: "c", slots: 1)]
        for _ in 0..<200 {
            var m = Scheduling(maxRunning: 4, cores: [0, 1], slots: SlotPool(hosts: hosts))
            _ = m.next(.daemonStarted(queued: []))
            for i in 0..<10 {
                _ = m.next(.submitted(Scheduling.Queued(id: "j\(i)", seq: Int64(i), processes: Int.random(in: 2...6, using: &rng))))
            }
            var steps = 0
            while !m.running.isEmpty && steps < 100 {
                steps += 1
                for h in hosts {
                    let held = m.running.values.compactMap(\.hosts).flatMap { $0 }.filter { $0.host == h.host }.reduce(0) { $0 + $1.slots }
                    let free = m.slots!.free[hosts.firstIndex(of: h)!]
                    #expect(held + free == h.slots)
                }
                let id = m.running.keys.sorted().randomElement(using: &rng)!
                _ = m.next(.workerExited(id, .finished))
                _ = m.next(.coresFreed(id))
            }
            #expect(m.queue.isEmpty && m.running.isEmpty && m.slots!.free == [2, 3, 1])
        }
    }
}

/// The scheduler as a pure state machine: each row feeds inputs in order and checks the actions
/// of the last one (and what the machine then holds).
@Suite struct SchedulingTests {
    typealias Q = Scheduling.Queued
    static func q(_ id: String, seq: Int64, priority: Int = 0, threads: Int = 1, restarts: Int = 0, max: Int = 2) -> Q {
        Q(id: id, priority: priority, seq: seq, threads: threads, restarts: restarts, maxRestarts: max)
    }
    static let a = q("a", seq: 1), b = q("b", seq: 2), c = q("c", seq: 3)

    struct Row: Sendable, CustomTestStringConvertible {
        var name: String
        var maxRunning = 1
        var cores = [0, 1]
        var inputs: [Scheduling.Input]
        var expected: [Scheduling.Action]
        var running: [String]? = nil
        var queue: [String]? = nil
        /// MPI slots per host (nil: no hostfile).
        var slots: [HostSlots]? = nil
        var testDescription: String { name }
    }

    static func d(_ id: String, seq: Int64, processes: Int) -> Q { Q(id: id, seq: seq, processes: processes) }
    static let twoHosts = [HostSlots(host: "n1", slots: 2), HostSlots(host: "n2", slots: 2)]

    static let rows: [Row] = [
        Row(name: "nothing launches before the daemon has started",
            inputs: [.submitted(a)], expected: [], running: [], queue: ["a"]),
        Row(name: "daemon start: the stored queue runs by priority, then submission",
            inputs: [.submitted(c), .daemonStarted(queued: [c, b, q("p", seq: 9, priority: 5)])],
            expected: [.launch("p", threads: 1, cores: nil)], running: ["p"], queue: ["b", "c"]),
        Row(name: "submitted: one job at a time, unpinned, with its own thread count",
            inputs: [.daemonStarted(queued: []), .submitted(q("a", seq: 1, threads: 2))],
            expected: [.launch("a", threads: 2, cores: nil)], running: ["a"]),
        Row(name: "a second submission waits for the slot",
            inputs: [.daemonStarted(queued: []), .submitted(a), .submitted(b)],
            expected: [], running: ["a"], queue: ["b"]),
        Row(name: "two at a time: each is pinned to cores of its own",
            maxRunning: 2, inputs: [.daemonStarted(queued: [a]), .submitted(b)],
            expected: [.launch("b", threads: 1, cores: [1])], running: ["a", "b"]),
        Row(name: "a job needing more cores than are free waits; the queue does not skip ahead",
            maxRunning: 2, inputs: [.daemonStarted(queued: [a]), .submitted(q("w", seq: 2, threads: 2)), .submitted(c)],
            expected: [], running: ["a"], queue: ["w", "c"]),
        Row(name: "cores freed: the waiting job gets both",
            maxRunning: 2, inputs: [.daemonStarted(queued: [a, q("w", seq: 2, threads: 2)]),
                                    .workerExited("a", .finished), .coresFreed("a")],
            expected: [.launch("w", threads: 2, cores: [0, 1])], running: ["w"]),
        Row(name: "worker exited normally: the job ends, keeping its slot until the end is recorded",
            inputs: [.daemonStarted(queued: [a, b]), .workerExited("a", .finished)],
            expected: [.end("a", .finish, reason: "finished all epochs")], running: ["a"], queue: ["b"]),
        Row(name: "end recorded: the next job starts",
            inputs: [.daemonStarted(queued: [a, b]), .workerExited("a", .finished), .coresFreed("a")],
            expected: [.launch("b", threads: 1, cores: nil)], running: ["b"]),
        Row(name: "abnormal exit: restart from the checkpoint",
            inputs: [.daemonStarted(queued: [a]), .workerExited("a", .abnormal("killed by signal 9"))],
            expected: [.restart("a", attempt: 1, of: 2, reason: "killed by signal 9")], running: ["a"]),
        Row(name: "restarts used before a daemon restart count",
            inputs: [.daemonStarted(queued: [q("a", seq: 1, restarts: 2)]), .workerExited("a", .abnormal("killed by signal 9"))],
            expected: [.end("a", .fail, reason: "worker killed by signal 9 (after 2 restarts)")], running: ["a"]),
        Row(name: "after the last restart the job fails with the last reason",
            inputs: [.daemonStarted(queued: [q("a", seq: 1, max: 1)]), .workerExited("a", .abnormal("killed by signal 9")),
                     .workerExited("a", .abnormal("exited with status 3"))],
            expected: [.end("a", .fail, reason: "worker exited with status 3 (after 1 restart)")], running: ["a"]),
        Row(name: "stop requested for a running job: sent to its worker",
            inputs: [.daemonStarted(queued: [a]), .stopRequested("a", .pause)],
            expected: [.stop("a", .pause)], running: ["a"]),
        Row(name: "a paused worker's stop ends the job paused",
            inputs: [.daemonStarted(queued: [a]), .stopRequested("a", .pause), .workerExited("a", .stopped)],
            expected: [.end("a", .pause, reason: "pause by request; checkpointed")], running: ["a"]),
        Row(name: "stop requested for a queued job: it leaves the queue through the store",
            inputs: [.daemonStarted(queued: [a, b]), .stopRequested("b", .cancel)],
            expected: [.transition("b", .cancel, reason: "cancelled by request")], running: ["a"], queue: []),
        Row(name: "a blocked head leaving the queue lets the jobs behind it start",
            maxRunning: 2, inputs: [.daemonStarted(queued: [a, q("w", seq: 2, threads: 2), c]), .stopRequested("w", .pause)],
            expected: [.transition("w", .pause, reason: "paused by request"), .launch("c", threads: 1, cores: [1])],
            running: ["a", "c"], queue: []),
        Row(name: "stop requested for a job that is ending: the store decides (its worker is gone)",
            inputs: [.daemonStarted(queued: [a]), .stopRequested("a", .pause), .workerExited("a", .stopped), .stopRequested("a", .cancel)],
            expected: [.transition("a", .cancel, reason: "cancelled by request")], running: ["a"]),
        Row(name: "resumed while its end is being recorded: queued again once the slot is free, and started",
            inputs: [.daemonStarted(queued: [a]), .stopRequested("a", .pause), .workerExited("a", .stopped),
                     .submitted(q("a", seq: 1)), .coresFreed("a")],
            expected: [.launch("a", threads: 1, cores: nil)], running: ["a"]),
        Row(name: "resumed, then cancelled, while its end is being recorded: not queued again",
            inputs: [.daemonStarted(queued: [a]), .stopRequested("a", .pause), .workerExited("a", .stopped),
                     .submitted(q("a", seq: 1)), .stopRequested("a", .cancel), .coresFreed("a")],
            expected: [], running: [], queue: []),
        Row(name: "faulted: the worker is stopped once, and the job fails whatever it says",
            inputs: [.daemonStarted(queued: [a]), .faulted("a", reason: "could not store metrics: the disk is full")],
            expected: [.stop("a", .interrupt)]),
        Row(name: "a faulted job's second fault sends nothing",
            inputs: [.daemonStarted(queued: [a]), .faulted("a", reason: "x"), .faulted("a", reason: "y")],
            expected: []),
        Row(name: "a faulted job that stopped cleanly is still marked failed",
            inputs: [.daemonStarted(queued: [a]), .faulted("a", reason: "could not store metrics: the disk is full"),
                     .workerExited("a", .stopped)],
            expected: [.end("a", .fail, reason: "could not store metrics: the disk is full")]),
        Row(name: "a faulted job is not restarted",
            inputs: [.daemonStarted(queued: [a]), .faulted("a", reason: "x"), .workerExited("a", .abnormal("killed by signal 9"))],
            expected: [.end("a", .fail, reason: "x")]),
        Row(name: "shutdown: every running job is interrupted, nothing new starts",
            maxRunning: 2, inputs: [.daemonStarted(queued: [b, a, c]), .shutdown],
            expected: [.stop("a", .interrupt), .stop("b", .interrupt)], running: ["a", "b"], queue: ["c"]),
        Row(name: "an interrupted job goes back to the queue once its end is recorded, and waits while the daemon stops",
            inputs: [.daemonStarted(queued: [a, b]), .shutdown, .workerExited("a", .stopped), .coresFreed("a")],
            expected: [], running: [], queue: ["a", "b"]),
        Row(name: "a worker stopped by someone else: interrupted, queued again, and started again",
            inputs: [.daemonStarted(queued: [a]), .workerExited("a", .stopped), .coresFreed("a")],
            expected: [.launch("a", threads: 1, cores: nil)], running: ["a"]),
        Row(name: "a launch of a job no longer queued in the store is dropped, and the next one starts",
            maxRunning: 2, inputs: [.daemonStarted(queued: [q("w", seq: 1, threads: 2), b]), .launchRefused("w", retry: false)],
            expected: [.launch("b", threads: 1, cores: [0])], running: ["b"], queue: []),
        Row(name: "a launch the store could not write: the job keeps its place and launches wait",
            inputs: [.daemonStarted(queued: [a, b]), .launchRefused("a", retry: true), .submitted(c)],
            expected: [], running: [], queue: ["a", "b", "c"]),
        Row(name: "launches are retried in queue order",
            inputs: [.daemonStarted(queued: [a, b]), .launchRefused("a", retry: true), .retryLaunches],
            expected: [.launch("a", threads: 1, cores: nil)], running: ["a"], queue: ["b"]),
        Row(name: "a distributed job takes its ranks' slots, host by host in the hostfile's order",
            maxRunning: 2, inputs: [.daemonStarted(queued: [d("m", seq: 1, processes: 3)])],
            expected: [.launch("m", threads: 1, cores: nil, hosts: [HostSlots(host: "n1", slots: 2), HostSlots(host: "n2", slots: 1)])],
            running: ["m"], slots: twoHosts),
        Row(name: "a distributed job waits for enough free slots; the queue does not skip ahead",
            maxRunning: 3, inputs: [.daemonStarted(queued: [d("m", seq: 1, processes: 3), d("n", seq: 2, processes: 2), c])],
            expected: [.launch("m", threads: 1, cores: nil, hosts: [HostSlots(host: "n1", slots: 2), HostSlots(host: "n2", slots: 1)])],
            running: ["m"], queue: ["n", "c"], slots: twoHosts),
        Row(name: "slots freed: the waiting distributed job gets them",
            maxRunning: 3, inputs: [.daemonStarted(queued: [d("m", seq: 1, processes: 3), d("n", seq: 2, processes: 4)]),
                                    .workerExited("m", .finished), .coresFreed("m")],
            expected: [.launch("n", threads: 1, cores: nil, hosts: twoHosts)], running: ["n"], slots: twoHosts),
        Row(name: "rank 0 runs on the first host: with its slots taken a distributed job waits, though other hosts have free slots",
            maxRunning: 2, inputs: [.daemonStarted(queued: [d("m", seq: 1, processes: 2)]), .submitted(d("n", seq: 2, processes: 2))],
            expected: [], running: ["m"], queue: ["n"], slots: [HostSlots(host: "n1", slots: 1), HostSlots(host: "n2", slots: 3)]),
        Row(name: "a distributed job and a pinned local one run side by side (slots are not cores)",
            maxRunning: 2, inputs: [.daemonStarted(queued: [d("m", seq: 1, processes: 2), b])],
            expected: [.launch("m", threads: 1, cores: nil, hosts: [HostSlots(host: "n1", slots: 2)]), .launch("b", threads: 1, cores: [0])],
            running: ["b", "m"], slots: twoHosts),
        Row(name: "a distributed job needing more slots than the daemon has fails instead of blocking the queue",
            inputs: [.daemonStarted(queued: [d("m", seq: 1, processes: 8), b])],
            expected: [.transition("m", .fail, reason: "needs 8 MPI slots; this daemon has 4 (its --mpi-hostfile)"),
                       .launch("b", threads: 1, cores: nil)],
            running: ["b"], queue: [], slots: twoHosts),
        Row(name: "without a hostfile a distributed job fails with what to do",
            inputs: [.daemonStarted(queued: [d("m", seq: 1, processes: 2)])],
            expected: [.transition("m", .fail, reason: "needs 2 MPI slots; this daemon has 0 (start it with --mpi-hostfile)")],
            running: [], queue: []),
        Row(name: "a distributed job's abnormal end restarts it on the same slots",
            inputs: [.daemonStarted(queued: [d("m", seq: 1, processes: 2)]), .workerExited("m", .abnormal("mpiexec exited with status 137"))],
            expected: [.restart("m", attempt: 1, of: 2, reason: "mpiexec exited with status 137")], running: ["m"], slots: twoHosts),
        Row(name: "an exit of a job the machine does not run is ignored",
            inputs: [.daemonStarted(queued: []), .workerExited("z", .finished), .coresFreed("z")],
            expected: [], running: []),
    ]

    @Test(arguments: rows)
    func table(_ row: Row) {
        var m = Scheduling(maxRunning: row.maxRunning, cores: row.cores, slots: row.slots.map { SlotPool(hosts: $0) })
        var last: [Scheduling.Action] = []
        for input in row.inputs { last = m.next(input) }
        #expect(last == row.expected)
        if let running = row.running { #expect(m.running.keys.sorted() == running) }
        if let queue = row.queue { #expect(m.queue.map(\.id) == queue) }
    }

    /// Cores held by running jobs never overlap, and every core comes back, under any order of ends.
    @Test func coresNeverShared() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            var m = Scheduling(maxRunning: 3, cores: [0, 1, 2, 3])
            _ = m.next(.daemonStarted(queued: []))
            for i in 0..<12 { _ = m.next(.submitted(Self.q("j\(i)", seq: Int64(i), threads: Int.random(in: 1...3, using: &rng)))) }
            var guardSteps = 0
            while !m.running.isEmpty && guardSteps < 100 {
                guardSteps += 1
                let held = m.running.values.compactMap(\.cores).flatMap { $0 }
                #expect(Set(held).count == held.count)
                #expect(Set(held).isDisjoint(with: m.cores.free))
                let id = m.running.keys.sorted().randomElement(using: &rng)!
                _ = m.next(.workerExited(id, .finished))
                _ = m.next(.coresFreed(id))
            }
            #expect(m.queue.isEmpty && m.running.isEmpty && m.cores.free == [0, 1, 2, 3])
        }
    }
}
