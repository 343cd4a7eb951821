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
        #expect(applied == ["v1-jobs", "v2-health"])
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
        #expect(throws: JobError.self) { try s.apply(.start, to: "missing", reason: "x") }
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
