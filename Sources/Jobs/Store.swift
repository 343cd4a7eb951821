import Foundation
import GRDB
import Synchronization

/// A job as stored: its spec (JSON text, opaque to this module), state, progress and times.
public struct JobRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "jobs"
    public var id: String
    public var name: String
    public var spec: String
    public var state: JobState
    public var priority: Int
    public var createdAt: Date
    public var startedAt: Date?
    public var finishedAt: Date?
    public var failureReason: String?
    /// Why the job is in its state: the reason of its latest transition ("submitted", "finished
    /// 10 epochs", "cancelled by request", a failure's cause). Every terminal job has one.
    public var reason: String?
    public var idempotencyKey: String?
    public var bodyHash: String?
    public var epoch: Int
    public var step: Int
    public var totalSteps: Int
    public var imagesPerSecond: Double?
    public var etaSeconds: Double?
    public var lastLoss: Double?
    public var bestKnn: Double?
    public var seq: Int64?
    /// Restarts of the job's worker after abnormal exits, over the job's whole life.
    public var restarts: Int
    /// Training, or an evaluation or embedding of a training job's checkpoint.
    public var kind: JobKind
    /// The training job an evaluation or embedding belongs to.
    public var parentId: String?
    /// What an evaluation or embedding found (JSON, opaque to this module).
    public var result: String?

    public init(id: String, name: String, spec: String, state: JobState = .queued, priority: Int = 0, createdAt: Date = Date(),
                idempotencyKey: String? = nil, bodyHash: String? = nil) {
        self.id = id; self.name = name; self.spec = spec; self.state = state; self.priority = priority; self.createdAt = createdAt
        self.idempotencyKey = idempotencyKey; self.bodyHash = bodyHash
        epoch = 0; step = 0; totalSteps = 0; restarts = 0; kind = .train
    }
}

/// What a job does. Every kind goes through the same queue, states and events.
public enum JobKind: String, Codable, Sendable, CaseIterable, DatabaseValueConvertible {
    case train, evaluation, embedding
}

extension JobState: DatabaseValueConvertible {}

/// One state change of a job, with its time and reason.
public struct TransitionRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "transitions"
    public var jobId: String
    public var from: JobState?
    public var to: JobState
    public var at: Date
    public var reason: String
    public init(jobId: String, from: JobState?, to: JobState, at: Date, reason: String) {
        self.jobId = jobId; self.from = from; self.to = to; self.at = at; self.reason = reason
    }
}

/// One metrics line of a job (JSON text), by step.
public struct MetricRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "metric_points"
    public var jobId: String
    public var step: Int
    public var kind: String
    public var json: String
    public init(jobId: String, step: Int, kind: String, json: String) {
        self.jobId = jobId; self.step = step; self.kind = kind; self.json = json
    }
}

/// A checkpoint file of a job.
public struct CheckpointRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "checkpoints"
    public var jobId: String
    public var name: String
    public var epoch: Int
    public var step: Int
    public var bytes: Int64
    public var sha256: String
    public var createdAt: Date
    public var knnTop1: Double?
    public init(jobId: String, name: String, epoch: Int, step: Int, bytes: Int64, sha256: String, createdAt: Date, knnTop1: Double?) {
        self.jobId = jobId; self.name = name; self.epoch = epoch; self.step = step; self.bytes = bytes; self.sha256 = sha256
        self.createdAt = createdAt; self.knnTop1 = knnTop1
    }
}

/// The SQLite store (GRDB, one `DatabasePool` in WAL mode). Migrations are named and never
/// edited once shipped; a new change is a new migration.
public final class JobStore: Sendable {
    public let pool: DatabasePool
    private let writes = Atomic<UInt64>(0)

    /// Counts the write transactions so far (bumped after each one ends). A value read before a
    /// read is still current while it has not changed, so readers may cache what they read.
    public var generation: UInt64 { writes.load(ordering: .acquiring) }

    private let failure = Mutex<String?>(nil)

    /// Why the last write failed for want of storage (disk full, read-only, I/O error); nil once
    /// a write has succeeded since.
    public var writeFailure: String? { failure.withLock { $0 } }

    /// Every write goes through here, so `generation` moves with the data. A write the disk
    /// refuses is a `JobError(.storage)` with SQLite's short reason (no paths); other database
    /// errors pass through as they are.
    private func write<T>(_ body: (Database) throws -> T) throws -> T {
        defer { writes.add(1, ordering: .releasing) }
        do {
            let result = try pool.write(body)
            failure.withLock { $0 = nil }
            return result
        } catch let error as DatabaseError where Self.isStorageFailure(error.resultCode) {
            let reason = "the job store cannot be written: \(Self.describe(error.resultCode))"
            failure.withLock { $0 = reason }
            throw JobError(.storage, reason)
        }
    }

    /// SQLite results that mean the storage under the database, not the request, is at fault.
    static func isStorageFailure(_ code: ResultCode) -> Bool {
        [.SQLITE_FULL, .SQLITE_IOERR, .SQLITE_READONLY, .SQLITE_CANTOPEN, .SQLITE_CORRUPT, .SQLITE_NOTADB, .SQLITE_PROTOCOL]
            .contains(code.primaryResultCode)
    }

    static func describe(_ code: ResultCode) -> String {
        switch code.primaryResultCode {
        case .SQLITE_FULL: "the disk is full"
        case .SQLITE_READONLY: "the database is read-only"
        case .SQLITE_IOERR: "an I/O error (is the disk full or failing?)"
        case .SQLITE_CANTOPEN: "the database file cannot be opened"
        default: "the database is damaged or unreadable (\(code))"
        }
    }

    public init(path: String) throws {
        var config = Configuration()
        config.busyMode = .timeout(5)
        pool = try DatabasePool(path: path, configuration: config)
        try Self.migrator.migrate(pool)
    }

    public static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1-jobs") { db in
            try db.create(table: "jobs") { t in
                t.column("id", .text).primaryKey()
                t.column("seq", .integer).unique()
                t.column("name", .text).notNull()
                t.column("spec", .text).notNull()
                t.column("state", .text).notNull().indexed()
                t.column("priority", .integer).notNull().defaults(to: 0)
                t.column("createdAt", .datetime).notNull()
                t.column("startedAt", .datetime)
                t.column("finishedAt", .datetime)
                t.column("failureReason", .text)
                t.column("idempotencyKey", .text).unique()
                t.column("bodyHash", .text)
                t.column("epoch", .integer).notNull().defaults(to: 0)
                t.column("step", .integer).notNull().defaults(to: 0)
                t.column("totalSteps", .integer).notNull().defaults(to: 0)
                t.column("imagesPerSecond", .double)
                t.column("etaSeconds", .double)
                t.column("lastLoss", .double)
                t.column("bestKnn", .double)
            }
            try db.create(table: "transitions") { t in
                t.autoIncrementedPrimaryKey("rowid")
                t.column("jobId", .text).notNull().indexed().references("jobs", onDelete: .cascade)
                t.column("from", .text)
                t.column("to", .text).notNull()
                t.column("at", .datetime).notNull()
                t.column("reason", .text).notNull()
            }
            try db.create(table: "metric_points") { t in
                t.column("jobId", .text).notNull().references("jobs", onDelete: .cascade)
                t.column("step", .integer).notNull()
                t.column("kind", .text).notNull()
                t.column("json", .text).notNull()
                t.primaryKey(["jobId", "kind", "step"], onConflict: .replace)
            }
            try db.create(table: "checkpoints") { t in
                t.column("jobId", .text).notNull().references("jobs", onDelete: .cascade)
                t.column("name", .text).notNull()
                t.column("epoch", .integer).notNull()
                t.column("step", .integer).notNull()
                t.column("bytes", .integer).notNull()
                t.column("sha256", .text).notNull()
                t.column("createdAt", .datetime).notNull()
                t.column("knnTop1", .double)
                t.primaryKey(["jobId", "name"], onConflict: .replace)
            }
        }
        m.registerMigration("v2-health") { db in
            // One row rewritten by `probeWrite`: a write that touches no job.
            try db.create(table: "health") { t in
                t.column("id", .integer).primaryKey()
                t.column("at", .datetime).notNull()
            }
        }
        m.registerMigration("v3-restarts") { db in
            // Counted across daemon restarts, so `max_restarts` bounds a job's whole life.
            try db.alter(table: "jobs") { t in t.add(column: "restarts", .integer).notNull().defaults(to: 0) }
        }
        m.registerMigration("v4-reason") { db in
            // The latest transition's reason on the job itself; jobs stored before it get theirs from the transitions.
            try db.alter(table: "jobs") { t in t.add(column: "reason", .text) }
            try db.execute(sql: """
                UPDATE jobs SET reason = (SELECT reason FROM transitions WHERE transitions.jobId = jobs.id ORDER BY rowid DESC LIMIT 1)
                """)
        }
        m.registerMigration("v5-kinds") { db in
            // Evaluations and embeddings are jobs of their own kinds, each under its training job
            // (deleted with it), with what they found in `result`.
            try db.alter(table: "jobs") { t in
                t.add(column: "kind", .text).notNull().defaults(to: "train")
                t.add(column: "parentId", .text).references("jobs", onDelete: .cascade)
                t.add(column: "result", .text)
            }
            try db.create(index: "jobs_parent", on: "jobs", columns: ["parentId"])
        }
        return m
    }

    /// A small real write (a WAL frame), to learn whether the store can be written again after
    /// a storage failure; clears `writeFailure` when it succeeds.
    public func probeWrite() throws {
        try write { db in try db.execute(sql: "INSERT OR REPLACE INTO health (id, at) VALUES (1, ?)", arguments: [Date()]) }
    }

    // MARK: - Jobs

    /// Inserts a job with its first transition, in one transaction. With an idempotency key
    /// already used: the same body returns the existing job (`created` false), another body fails.
    public func create(_ job: JobRecord) throws -> (job: JobRecord, created: Bool) {
        try write { db in
            if let key = job.idempotencyKey, let existing = try JobRecord.filter(Column("idempotencyKey") == key).fetchOne(db) {
                guard existing.bodyHash == job.bodyHash else {
                    throw JobError(.conflict, "Idempotency-Key \(key) was used with another body (job \(existing.id))")
                }
                return (existing, false)
            }
            var j = job
            j.seq = (try Int64.fetchOne(db, sql: "SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs")) ?? 1
            j.reason = "submitted"
            try j.insert(db)
            try TransitionRecord(jobId: j.id, from: nil, to: j.state, at: j.createdAt, reason: "submitted").insert(db)
            return (j, true)
        }
    }

    public func job(_ id: String) throws -> JobRecord? { try pool.read { try JobRecord.fetchOne($0, key: id) } }

    /// Jobs newest first, optionally by state, after the cursor (a `seq`), at most `limit`.
    public func jobs(state: JobState? = nil, kind: JobKind? = nil, parent: String? = nil, limit: Int = 50,
                     before cursor: Int64? = nil) throws -> [JobRecord] {
        try pool.read { db in
            var q = JobRecord.all()
            if let state { q = q.filter(Column("state") == state.rawValue) }
            if let kind { q = q.filter(Column("kind") == kind.rawValue) }
            if let parent { q = q.filter(Column("parentId") == parent) }
            if let cursor { q = q.filter(Column("seq") < cursor) }
            return try q.order(Column("seq").desc).limit(limit).fetchAll(db)
        }
    }

    /// Applies `event` through the state machine and records the transition, atomically.
    @discardableResult
    public func apply(_ event: JobEvent, to id: String, reason: String, at: Date = Date(),
                      update: (inout JobRecord) -> Void = { _ in }) throws -> JobRecord {
        try write { db in
            guard var j = try JobRecord.fetchOne(db, key: id) else { throw JobError(.notFound, "no job \(id)") }
            let next = try Lifecycle.next(j.state, event).get()
            let from = j.state
            j.state = next
            if next == .running { j.startedAt = j.startedAt ?? at }
            if next.isTerminal { j.finishedAt = at }
            if next == .failed { j.failureReason = reason }
            j.reason = reason
            update(&j)
            try j.update(db)
            try TransitionRecord(jobId: id, from: from, to: next, at: at, reason: reason).insert(db)
            return j
        }
    }

    public func updateProgress(_ id: String, _ update: @escaping (inout JobRecord) -> Void) throws {
        try write { db in
            guard var j = try JobRecord.fetchOne(db, key: id) else { return }
            update(&j)
            try j.update(db)
        }
    }

    public func transitions(_ id: String) throws -> [TransitionRecord] {
        try pool.read { try TransitionRecord.filter(Column("jobId") == id).order(Column("rowid")).fetchAll($0) }
    }

    public func delete(_ id: String) throws {
        _ = try write { db in try JobRecord.deleteOne(db, key: id) }
    }

    /// The next queued job: highest priority, then earliest submitted.
    public func nextQueued() throws -> JobRecord? {
        try pool.read { db in
            try JobRecord.filter(Column("state") == JobState.queued.rawValue).order(Column("priority").desc, Column("seq").asc).fetchOne(db)
        }
    }

    public func count(by state: JobState) throws -> Int {
        try pool.read { try JobRecord.filter(Column("state") == state.rawValue).fetchCount($0) }
    }

    // MARK: - Metrics and checkpoints

    public func appendMetrics(_ points: [MetricRecord]) throws {
        guard !points.isEmpty else { return }
        try write { db in for p in points { try p.insert(db) } }
    }

    public func metrics(_ id: String, afterStep: Int = -1, kind: String? = nil) throws -> [MetricRecord] {
        try pool.read { db in
            var q = MetricRecord.filter(Column("jobId") == id && Column("step") > afterStep)
            if let kind { q = q.filter(Column("kind") == kind) }
            return try q.order(Column("step"), Column("kind")).fetchAll(db)
        }
    }

    /// The highest step with a stored metric point of the job, nil when none.
    public func lastMetricStep(_ id: String) throws -> Int? {
        try pool.read { try Int.fetchOne($0, sql: "SELECT MAX(step) FROM metric_points WHERE jobId = ?", arguments: [id]) }
    }

    public func recordCheckpoint(_ c: CheckpointRecord) throws { try write { try c.insert($0) } }

    public func removeCheckpoint(job: String, name: String) throws {
        _ = try write { db in try CheckpointRecord.filter(Column("jobId") == job && Column("name") == name).deleteAll(db) }
    }

    public func checkpoints(_ id: String) throws -> [CheckpointRecord] {
        try pool.read { try CheckpointRecord.filter(Column("jobId") == id).order(Column("step")).fetchAll($0) }
    }
}
