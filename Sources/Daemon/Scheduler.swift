import Data
import Foundation
import Jobs
import Logging
import MoCo
import NN
import Worker
import CProcess
#if canImport(Glibc)
import Glibc
#endif

/// Settings the daemon runs with.
public struct DaemonSettings: Sendable {
    public var dataDirectory: URL
    public var dataRoots: [String]
    public var maxRunning: Int
    /// Compute threads (cores) shared by the running jobs.
    public var threads: Int
    /// The command that runs one job's worker process (`mocod worker`); the scheduler appends
    /// the job's options.
    public var workerCommand: [String]
    public init(dataDirectory: URL, dataRoots: [String], maxRunning: Int = 1, threads: Int = 2,
                workerCommand: [String] = DaemonSettings.ownWorkerCommand) {
        self.dataDirectory = dataDirectory; self.dataRoots = dataRoots; self.maxRunning = maxRunning; self.threads = threads
        self.workerCommand = workerCommand
    }
    /// This executable (`/proc/self/exe`) with `worker`: right for mocod itself.
    public static var ownWorkerCommand: [String] {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let path = n > 0 ? String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
        return [path, "worker"]
    }
    public var databasePath: String { dataDirectory.appendingPathComponent("mocod.sqlite").path }
    public func jobDirectory(_ id: String) -> URL { dataDirectory.appendingPathComponent("jobs/\(id)") }
}

/// A live event of a job, for Server-Sent Events subscribers.
public struct JobStreamEvent: Sendable {
    /// The SSE event name: `state`, `metric`, `eval`, `checkpoint`, `restart` or `shutdown`.
    public var name: String
    /// The event's data (JSON made by `Codable`).
    public var json: String
    /// For `state` events, the job's new state (so a stream knows when it is over without re-parsing).
    public var state: JobState?
    public init(name: String, json: String, state: JobState? = nil) { self.name = name; self.json = json; self.state = state }

    /// A `state` event.
    static func state(_ state: JobState, reason: String) -> JobStreamEvent {
        JobStreamEvent(name: "state", json: Scheduler.json(StateData(state: state, reason: reason)), state: state)
    }

    /// The final event of every stream when the daemon stops.
    static let shutdown = JobStreamEvent(name: "shutdown", json: Scheduler.json(ShutdownData(reason: "the daemon is stopping")))

    struct StateData: Encodable { var state: JobState; var reason: String }
    struct ShutdownData: Encodable { var reason: String }
}

/// Runs jobs: a queue by priority then submission, at most `maxRunning` at once, each training
/// on its own thread; every transition goes through the store's state machine.
public final class Scheduler: @unchecked Sendable {
    /// Safe to share: `running`, `stopRequests` and `subscribers` are guarded by `lock`; the
    /// store is thread-safe; settings are immutable.
    public let store: JobStore
    public let settings: DaemonSettings
    let logger: Logger
    private let lock = NSLock()
    private var running: Set<String> = []
    /// Creates the training threads, so they inherit its normal priority (see `run`).
    private let launcher = Launcher()
    private var stopRequests: [String: JobEvent] = [:]
    /// The daemon's cores; with more than one job at a time each job is pinned to its own.
    private var cores: CorePool
    /// Cores held by each running job (nil: not pinned).
    private var coresHeld: [String: [Int]] = [:]
    /// The worker process of each running job.
    private var workers: [String: WorkerHandle] = [:]
    /// Why a running job must stop on its own account (its progress could not be stored).
    private var jobFaults: [String: String] = [:]
    /// Transitions decided but not yet in the store (it refused the write): retried until they
    /// land; meanwhile reads show the job in its new state (see `current`).
    private var pendingTransitions: [String: PendingTransition] = [:]
    private var subscribers: [String: [UUID: @Sendable (JobStreamEvent) -> Void]] = [:]
    private var accepting = true
    private var streamsClosed = false
    private var lastProbe = Date.distantPast
    /// Set once `closeStreams` ran: a stream opened later ends at once.
    public var areStreamsClosed: Bool { lock.lock(); defer { lock.unlock() }; return streamsClosed }
    public let started = Date()
    public private(set) var stepsTotal = 0

    /// Told the number of running jobs whenever it changes (mocod limits the API's CPU while it is above 0).
    private let onRunningCountChange: @Sendable (Int) -> Void

    public init(store: JobStore, settings: DaemonSettings, logger: Logger, onRunningCountChange: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.store = store
        self.settings = settings
        self.logger = logger
        self.onRunningCountChange = onRunningCountChange
        self.cores = CorePool(cores: Self.usableCores(settings.threads))
        // Commands go to workers over pipes: a worker that died must not take the daemon with it.
        signal(SIGPIPE, SIG_IGN)
    }

    /// A transition the store has not taken yet.
    struct PendingTransition: Sendable {
        var event: JobEvent
        var reason: String
        var since: Date
    }

    // MARK: - Health

    /// `nil` when the daemon is healthy; otherwise why it is degraded (the store cannot be
    /// written, or a job's end is not yet recorded).
    public var degradedReason: String? {
        lock.lock()
        let pending = pendingTransitions
        // After a failed write with nothing left to retry, a probe (at most once a second)
        // finds out whether the store can be written again.
        let probe = pending.isEmpty && store.writeFailure != nil && Date().timeIntervalSince(lastProbe) >= 1
        if probe { lastProbe = Date() }
        lock.unlock()
        if probe { try? store.probeWrite() }
        if let (id, p) = pending.min(by: { $0.value.since < $1.value.since }) {
            return "\(store.writeFailure ?? "the job store cannot be written"); \(pending.count) job transition(s) not yet recorded "
                + "(oldest: \(id) \(p.event.rawValue) since \(ISO8601DateFormatter().string(from: p.since))); retrying"
        }
        return store.writeFailure
    }

    /// The job as clients should see it: the stored record with any transition that is decided
    /// but not yet stored applied, so a job whose trainer has ended never reads as running.
    public func current(_ record: JobRecord) -> JobRecord {
        lock.lock(); let p = pendingTransitions[record.id]; lock.unlock()
        guard let p, case .success(let next) = Lifecycle.next(record.state, p.event) else { return record }
        var j = record
        j.state = next
        if next.isTerminal { j.finishedAt = j.finishedAt ?? p.since }
        if next == .failed { j.failureReason = p.reason }
        return j
    }

    /// Whether any job has a transition waiting for the store (reads must not be cached then).
    public var hasPendingTransitions: Bool { lock.lock(); defer { lock.unlock() }; return !pendingTransitions.isEmpty }

    /// The job by id as clients should see it (see `current`).
    public func job(_ id: String) throws -> JobRecord? { try store.job(id).map(current) }

    // MARK: - Submission

    /// Parses and checks a spec the way a submission would, without creating anything.
    public func validate(_ body: Data) -> Result<JobSpec, SpecError> {
        let spec: JobSpec
        do { spec = try JobSpec.parse(body) } catch { return .failure(error) }
        var issues: [FieldIssue] = []
        for (field, path) in [("data.path", spec.data.path)] + (spec.eval.map { [("eval.path", $0.path)] } ?? []) {
            do { _ = try DataSources.resolve(path, roots: settings.dataRoots, allowAbsolute: false) } catch {
                issues.append(FieldIssue(field, error.message))
            }
        }
        // Limits that keep one job from taking the machine.
        if spec.optim.batch_size > 1024 { issues.append(FieldIssue("optim.batch_size", "must be at most 1024 on this daemon")) }
        if spec.moco.queue > 262_144 { issues.append(FieldIssue("moco.queue", "must be at most 262144 on this daemon")) }
        if spec.augment.size > 256 { issues.append(FieldIssue("augment.size", "must be at most 256 on this daemon")) }
        if spec.optim.epochs > 1000 { issues.append(FieldIssue("optim.epochs", "must be at most 1000 on this daemon")) }
        if spec.threads > settings.threads { issues.append(FieldIssue("threads", "must be at most \(settings.threads) (the daemon's thread budget)")) }
        let memory = Self.estimatedMemoryBytes(spec)
        let available = Self.physicalMemory()
        if Double(memory) > 0.8 * Double(available) {
            issues.append(FieldIssue("optim.batch_size", "the job needs about \(memory >> 20) MiB, more than 80% of the machine's \(available >> 20) MiB"))
        }
        return issues.isEmpty ? .success(spec) : .failure(SpecError(issues))
    }

    /// A rough upper bound: both encoders' weights, SGD state and gradients, the queue, and the
    /// activations of one training step (per image: the forward FLOPs of the stem-sized maps).
    public static func estimatedMemoryBytes(_ spec: JobSpec) -> Int {
        let c = spec.resnetConfig
        let w = Double(c.width), s = Double(spec.augment.size)
        let spatial = spec.model.stem == .cifar ? s * s : (s / 4) * (s / 4)
        let blocks: Double = c.arch == .resnet18 ? 8 : 16
        let perImage = spatial * w * 4 * blocks * 2.5 * (c.arch == .resnet50 ? 4 : 1)
        let params = 11.2e6 * (w / 64) * (w / 64) * (c.arch == .resnet50 ? 2.1 : c.arch == .resnet34 ? 1.9 : 1)
        let bytes = 4 * (perImage * Double(spec.optim.batch_size) * 2 + params * 5 + Double(spec.moco.queue * spec.model.dim))
        return Int(bytes) + 300 << 20
    }

    static func physicalMemory() -> Int { Int(ProcessInfo.processInfo.physicalMemory) }

    /// Submits a job: validated, stored (committed before returning), then scheduled.
    public func submit(_ body: Data, idempotencyKey: String?, priority: Int) throws -> (JobRecord, Bool) {
        lock.lock(); let open = accepting; lock.unlock()
        guard open else { throw JobError(.unavailable, "the daemon is shutting down") }
        let spec = try validate(body).get()
        let canonical = spec.canonicalJSON()
        let record = JobRecord(id: "job_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(16),
                               name: spec.name, spec: canonical, priority: priority, idempotencyKey: idempotencyKey,
                               bodyHash: idempotencyKey == nil ? nil : SHA256.hex(body))
        let (job, created) = try store.create(record)
        if created {
            publish(job.id, .state(.queued, reason: "submitted"))
            schedule()
        }
        return (job, created)
    }

    // MARK: - Control

    public func cancel(_ id: String) throws -> JobRecord { try stop(id, .cancel, reason: "cancelled by request") }

    public func pause(_ id: String) throws -> JobRecord { try stop(id, .pause, reason: "paused by request") }

    /// A running job stops at its next step (after a checkpoint); any other goes through the
    /// state machine at once.
    private func stop(_ id: String, _ event: JobEvent, reason: String) throws -> JobRecord {
        guard let j = try job(id) else { throw JobError(.notFound, "no job \(id)") }
        if j.state == .running && isRunning(id) { return try requestStop(id, event) }
        try refuseWhileEnding(id)
        let r = try store.apply(event, to: id, reason: reason)
        publishState(r, reason: reason)
        return r
    }

    public func resume(_ id: String) throws -> JobRecord {
        try refuseWhileEnding(id)
        let r = try store.apply(.resume, to: id, reason: "resumed by request")
        publishState(r, reason: "resumed by request")
        schedule()
        return r
    }

    /// A running job stops at its next step boundary (after writing a checkpoint).
    private func requestStop(_ id: String, _ event: JobEvent) throws -> JobRecord {
        lock.lock()
        stopRequests[id] = event
        let worker = workers[id]
        lock.unlock()
        worker?.send(Self.command(for: event))
        guard let j = try job(id) else { throw JobError(.notFound, "no job \(id)") }
        return j
    }

    /// The first `count` cores this process may run on (its affinity mask), or 0..<count if unknown.
    static func usableCores(_ count: Int) -> [Int] {
        var allowed = [Int32](repeating: 0, count: 1024)
        let n = allowed.withUnsafeMutableBufferPointer { mocod_allowed_cores($0.baseAddress, Int32($0.count)) }
        let usable = n > 0 ? allowed.prefix(Int(n)).map(Int.init) : []
        return usable.count >= count ? Array(usable.prefix(count)) : Array(0..<max(count, 1))
    }

    static func command(for event: JobEvent) -> WorkerCommand {
        switch event {
        case .pause: WorkerCommand(.pause)
        case .cancel: WorkerCommand(.cancel)
        default: WorkerCommand(.shutdown)
        }
    }

    private func isRunning(_ id: String) -> Bool { lock.lock(); defer { lock.unlock() }; return running.contains(id) }

    /// A job whose end is decided but not yet stored takes no other transition meanwhile.
    private func refuseWhileEnding(_ id: String) throws {
        lock.lock(); let p = pendingTransitions[id]; lock.unlock()
        if let p {
            throw JobError(.storage, "job \(id) has ended (\(p.event.rawValue): \(p.reason)) but the store cannot record it yet: "
                + (store.writeFailure ?? "retrying"))
        }
    }

    public func delete(_ id: String) throws {
        guard let j = try job(id) else { throw JobError(.notFound, "no job \(id)") }
        try refuseWhileEnding(id)
        guard j.state.isTerminal else { throw JobError(.invalidState, "only finished jobs can be deleted; this one is \(j.state.rawValue)") }
        try store.delete(id)
        try? FileManager.default.removeItem(at: settings.jobDirectory(id))
    }

    public var runningCount: Int { lock.lock(); defer { lock.unlock() }; return running.count }

    // MARK: - Scheduling

    /// Starts queued jobs while slots are free.
    public func schedule() {
        var started: [JobRecord] = []
        lock.lock()
        while accepting && running.count < settings.maxRunning {
            guard let next = try? store.nextQueued() else { break }
            // With several jobs at once, each gets its own cores, as many as its threads: the
            // queue waits until they are free (a job's threads are never cut).
            var held: [Int]?
            if settings.maxRunning > 1 {
                let threads = (try? JobSpec.parse(Data(next.spec.utf8)))?.threads ?? 1
                guard let c = cores.take(threads) else { break }
                held = c
            }
            guard let job = try? store.apply(.start, to: next.id, reason: "scheduled") else {
                if let held { cores.give(held) }
                break
            }
            started.append(job)
            running.insert(job.id)
            coresHeld[job.id] = held
            onRunningCountChange(running.count)
            let pinned = held
            launcher.start(name: "mocod-job") { [self] in run(job, cores: pinned) }
        }
        lock.unlock()
        // Published outside the lock: subscribers' handlers may call back into the scheduler.
        for job in started { publishState(job, reason: "scheduled") }
    }

    /// Jobs that were running when the daemon stopped go back to the queue, to resume from
    /// their last valid checkpoint.
    public func recover() throws {
        for j in try store.jobs(state: .running, limit: 10_000) {
            do {
                _ = try store.apply(.interrupt, to: j.id, reason: "daemon restarted; resuming from the last valid checkpoint")
            } catch let e as JobError where e.code == .invalidState || e.code == .notFound {
                continue   // a request (cancel, delete) got to it first
            }
        }
        schedule()
    }

    /// Stops accepting, asks running jobs to checkpoint and stop, and waits for them.
    public func shutdown(timeout: Double = 120) {
        lock.lock()
        accepting = false
        for id in running { stopRequests[id] = .interrupt }
        let all = Array(workers.values)
        lock.unlock()
        for w in all { w.send(WorkerCommand(.shutdown)) }
        let deadline = Date().addingTimeInterval(timeout)
        while (runningCount > 0 || hasPendingTransitions) && Date() < deadline { usleep(50_000) }
    }

    /// Ends every live event stream with a final `shutdown` event (the daemon is stopping).
    public func closeStreams() {
        lock.lock(); streamsClosed = true; let all = subscribers; lock.unlock()
        for (_, subs) in all {
            for s in subs.values { s(.shutdown) }
        }
    }

    public var isAccepting: Bool { lock.lock(); defer { lock.unlock() }; return accepting }

    // MARK: - Running one job (on its own thread)

    private func run(_ job: JobRecord, cores held: [Int]?) {
        // New threads inherit their creator's scheduling class and nice value. Job threads are
        // started by the launcher thread (normal priority), never by an HTTP thread (which runs
        // at a lower priority); the worker processes they start inherit it too.
        var param = sched_param()
        param.sched_priority = 0
        _ = pthread_setschedparam(pthread_self(), 0 /* SCHED_OTHER */, &param)
        let id = job.id
        var log = logger
        log[metadataKey: "job.id"] = "\(id)"
        var (event, reason): (JobEvent, String)
        do {
            let spec = try JobSpec.parse(Data(job.spec.utf8))
            let dir = settings.jobDirectory(id)
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            try SafeTensorsFile.writeDurably(Data(job.spec.utf8), to: dir.appendingPathComponent("spec.json"))
            syncCheckpointsOnDisk(id, spec: spec, directory: dir)
            syncMetricsOnDisk(id, spec: spec, directory: dir, log: log)
            (event, reason) = superviseWorkers(id, spec: spec, directory: dir, cores: held, log: log)
        } catch {
            (event, reason) = (.fail, "\(error)")
        }
        lock.lock()
        stopRequests[id] = nil
        let fault = jobFaults.removeValue(forKey: id)
        if let c = coresHeld.removeValue(forKey: id) { cores.give(c) }
        lock.unlock()
        // Progress that could not be stored fails the job, whatever the worker made of the stop.
        if let fault, event != .fail { (event, reason) = (.fail, fault) }
        reason = publicReason(reason, job: id)
        endJob(id, event, reason: reason, log: log)
        schedule()
    }

    /// After a crash the newest checkpoint may be on disk but not yet in the table: records it.
    private func syncCheckpointsOnDisk(_ id: String, spec: JobSpec, directory: URL) {
        let ckpts = CheckpointStore(directory: directory.appendingPathComponent("checkpoints"),
                                    keepLast: spec.checkpoint.keep_last, keepBest: spec.checkpoint.keep_best)
        let known = Set(((try? store.checkpoints(id)) ?? []).map(\.name))
        for e in ckpts.list() where !known.contains(e.url.lastPathComponent) {
            guard let sha = Checkpoint.recordedDigest(of: e.url) else { continue }
            let bytes = ((try? FileManager.default.attributesOfItem(atPath: e.url.path))?[.size] as? NSNumber)?.int64Value ?? 0
            try? store.recordCheckpoint(CheckpointRecord(jobId: id, name: e.url.lastPathComponent, epoch: e.epoch, step: e.step,
                                                         bytes: bytes, sha256: sha, createdAt: Date(), knnTop1: e.knnTop1))
        }
    }

    /// A worker outlives its daemon by up to a step (it stops and checkpoints when the daemon
    /// dies): the points it wrote to `metrics.jsonl` meanwhile, up to the checkpoint it will
    /// resume from, are stored now, so every step appears once.
    private func syncMetricsOnDisk(_ id: String, spec: JobSpec, directory: URL, log: Logger) {
        let ckpts = CheckpointStore(directory: directory.appendingPathComponent("checkpoints"),
                                    keepLast: spec.checkpoint.keep_last, keepBest: spec.checkpoint.keep_best)
        guard let resumeStep = ckpts.latestValid()?.step,
              let text = try? String(contentsOf: directory.appendingPathComponent("metrics.jsonl"), encoding: .utf8) else { return }
        let stored = ((try? store.lastMetricStep(id)) ?? nil) ?? 0
        guard stored < resumeStep else { return }
        let points = text.split(separator: "\n").compactMap { try? JSONDecoder().decode(MetricPoint.self, from: Data($0.utf8)) }
            .filter { $0.step > stored && $0.step <= resumeStep }
        var pending = points
        flush(id, &pending, log: log)
    }

    /// Runs the job's worker until it ends normally, restarting it from the newest valid
    /// checkpoint after an abnormal exit, up to `max_restarts` times. Returns the job's end.
    private func superviseWorkers(_ id: String, spec: JobSpec, directory: URL, cores held: [Int]?, log: Logger) -> (JobEvent, String) {
        var restarts = 0
        while true {
            let exit = runWorker(id, directory: directory, cores: held, log: log)
            lock.lock()
            let requested = stopRequests[id]
            let faulted = jobFaults[id] != nil
            lock.unlock()
            let end: WorkerEnd
            switch exit.last?.kind {
            case .finished?: end = .finished
            case .failed?: end = .failed(exit.last?.message ?? "the worker failed")
            case .stopped?: end = .stopped
            default:
                end = .abnormal(exit.description)
                appendLog(id, "worker exited abnormally: \(exit.description)")
                log.warning("worker exited abnormally", metadata: ["reason": "\(exit.description)", "restarts": "\(restarts)"])
            }
            switch Supervision.decide(end, stopRequest: requested, faulted: faulted, restarts: restarts, maxRestarts: spec.max_restarts) {
            case .end(let event, let reason):
                return (event, reason)
            case .restart(let attempt):
                restarts = attempt
                appendLog(id, "restarting the worker from the newest valid checkpoint (restart \(attempt) of \(spec.max_restarts))")
                publish(id, JobStreamEvent(name: "restart", json: Self.json(RestartEvent(reason: exit.description, restart: attempt,
                                                                                         max_restarts: spec.max_restarts))))
            }
        }
    }

    struct RestartEvent: Encodable { var reason: String; var restart: Int; var max_restarts: Int }

    /// How a worker process ended: its last event if it ended normally, else why not.
    struct WorkerExit {
        var last: WorkerEvent?
        var description: String
    }

    /// Starts the job's worker, records what it reports, and waits for it to exit.
    private func runWorker(_ id: String, directory: URL, cores held: [Int]?, log: Logger) -> WorkerExit {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: settings.workerCommand[0])
        var args = Array(settings.workerCommand.dropFirst()) + ["--job-dir", directory.path, "--parent", String(getpid())]
        for r in settings.dataRoots { args += ["--data-root", r] }
        if let held { args += ["--cores", held.map(String.init).joined(separator: ",")] }
        p.arguments = args
        let input = Pipe(), output = Pipe()
        p.standardInput = input
        p.standardOutput = output
        let logURL = directory.appendingPathComponent("worker.log")
        if !FileManager.default.fileExists(atPath: logURL.path) { FileManager.default.createFile(atPath: logURL.path, contents: nil) }
        let stderr = FileHandle(forWritingAtPath: logURL.path)
        _ = try? stderr?.seekToEnd()
        p.standardError = stderr ?? FileHandle.nullDevice
        do { try p.run() } catch {
            return WorkerExit(last: WorkerEvent(kind: .failed, message: "cannot start the worker (\(settings.workerCommand[0])): \(error)"), description: "")
        }
        try? stderr?.close()
        let worker = WorkerHandle(process: p, input: input.fileHandleForWriting)
        lock.lock()
        workers[id] = worker
        let pending = stopRequests[id]
        lock.unlock()
        if let pending { worker.send(Self.command(for: pending)) }   // asked to stop before it started
        var last: WorkerEvent?
        var metrics: [MetricPoint] = []
        var lastFlush = Date()
        let fd = output.fileHandleForReading.fileDescriptor
        var line: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            var start = 0
            for i in 0..<n where buffer[i] == 0x0a {
                line += buffer[start..<i]
                start = i + 1
                if let e = try? WorkerEvent.decode(line) {
                    handle(e, job: id, pending: &metrics, lastFlush: &lastFlush, log: log)
                    if [.finished, .stopped, .failed].contains(e.kind) { last = e }
                } else {
                    log.warning("unreadable worker event", metadata: ["line": "\(String(decoding: line.prefix(200), as: UTF8.self))"])
                }
                line.removeAll(keepingCapacity: true)
            }
            line += buffer[start..<n]
        }
        flush(id, &metrics, log: log)
        p.waitUntilExit()
        lock.lock(); workers[id] = nil; lock.unlock()
        worker.close()
        let status = p.terminationStatus
        if p.terminationReason == .uncaughtSignal {
            let name = String(cString: strsignal(status))
            let hint = status == SIGKILL ? " (out of memory?)" : ""
            return WorkerExit(last: nil, description: "killed by signal \(status) (\(name))\(hint)")
        }
        if status != 0 || last == nil { return WorkerExit(last: nil, description: "exited with status \(status) without finishing its run") }
        return WorkerExit(last: last, description: "")
    }

    /// Records a job's end: the transition is applied before the slot is given back, and
    /// retried (with back-off) while the store refuses it, so the end is never lost and the
    /// job never reads as running meanwhile (see `current`).
    private func endJob(_ id: String, _ event: JobEvent, reason: String, log: Logger) {
        lock.lock()
        pendingTransitions[id] = PendingTransition(event: event, reason: reason, since: Date())
        running.remove(id)
        onRunningCountChange(running.count)
        lock.unlock()
        var delay = 0.1
        var warned = false
        while true {
            do {
                let j = try store.apply(event, to: id, reason: reason)
                lock.lock(); pendingTransitions[id] = nil; lock.unlock()
                publishState(j, reason: reason)
                log.info("job ended", metadata: ["job.state": "\(j.state.rawValue)", "job.reason": "\(reason)"])
                return
            } catch let e as JobError where e.code != .storage {
                // The job changed under us (deleted, or no longer running): nothing to record.
                lock.lock(); pendingTransitions[id] = nil; lock.unlock()
                log.warning("job end not recorded", metadata: ["error": "\(e)"])
                return
            } catch {
                if !warned {
                    log.error("cannot record the job's end; retrying until the store can be written",
                              metadata: ["job.event": "\(event.rawValue)", "error": "\(error)"])
                    warned = true
                }
                Thread.sleep(forTimeInterval: delay)
                delay = min(delay * 2, 2)
            }
        }
    }

    /// A failure reason as clients see it: files named relative to the job directory or the data
    /// root they lie in, never by the server's absolute paths.
    func publicReason(_ reason: String, job id: String) -> String {
        var out = reason
        let dir = settings.jobDirectory(id).standardizedFileURL.path
        var prefixes = [(dir + "/", ""), (dir, ".")]
        for root in settings.dataRoots {
            let real = URL(fileURLWithPath: root).resolvingSymlinksInPath().path
            prefixes += [(real + "/", ""), (root + "/", "")]
        }
        let dataDir = settings.dataDirectory.standardizedFileURL.path
        prefixes.append((dataDir + "/", ""))
        for (prefix, replacement) in prefixes.sorted(by: { $0.0.count > $1.0.count }) where prefix.count > 1 {
            out = out.replacingOccurrences(of: prefix, with: replacement)
        }
        return out
    }

    /// A store write for a running job failed: the job stops at its next step and fails.
    private func fault(_ id: String, _ error: Error, while doing: String, log: Logger) {
        let why = (error as? JobError)?.message ?? "\(error)"
        lock.lock()
        let first = jobFaults[id] == nil
        if first { jobFaults[id] = "could not \(doing): \(why)" }
        let worker = workers[id]
        lock.unlock()
        if first {
            log.error("job store write failed; stopping the job", metadata: ["error": "\(why)"])
            worker?.send(WorkerCommand(.shutdown))
        }
    }

    private func handle(_ event: WorkerEvent, job id: String, pending: inout [MetricPoint], lastFlush: inout Date, log: Logger) {
        switch event.kind {
        case .started:
            let total = event.totalSteps ?? 0
            do { try store.updateProgress(id) { $0.totalSteps = total } } catch { fault(id, error, while: "record progress", log: log) }
            for w in event.warnings ?? [] { log.warning("preflight", metadata: ["warning": "\(w)"]) }
        case .step, .evaluation:
            guard let p = event.point else { return }
            pending.append(p)
            lock.lock(); stepsTotal += p.kind == .step ? 1 : 0; lock.unlock()
            if Date().timeIntervalSince(lastFlush) > 1 || p.kind == .eval {
                flush(id, &pending, log: log)
                lastFlush = Date()
            }
            publish(id, JobStreamEvent(name: p.kind == .eval ? "eval" : "metric", json: Self.json(p)))
        case .checkpointing:
            // Everything up to a checkpoint is made durable before it exists: after a crash,
            // training resumes there, and no metric point before it may be missing.
            flush(id, &pending, log: log)
            lastFlush = Date()
        case .checkpointed:
            guard let c = event.checkpoint else { return }
            let record = CheckpointRecord(jobId: id, name: c.name, epoch: c.info.epoch, step: c.info.step, bytes: c.bytes, sha256: c.sha256,
                                          createdAt: c.info.created, knnTop1: c.info.knnTop1)
            do {
                try store.recordCheckpoint(record)
                // Retention may have removed older files: keep the table in step with the folder.
                let folder = settings.jobDirectory(id).appendingPathComponent("checkpoints")
                let present = Set((try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? [])
                for old in try store.checkpoints(id) where !present.contains(old.name) { try store.removeCheckpoint(job: id, name: old.name) }
            } catch {
                fault(id, error, while: "record checkpoint \(c.name)", log: log)
            }
            publish(id, JobStreamEvent(name: "checkpoint", json: Self.json(CheckpointEvent(name: c.name, sha256: c.sha256))))
            log.info("checkpoint", metadata: ["checkpoint": "\(c.name)"])
        case .message:
            let m = event.message ?? ""
            log.info("\(m)")
            appendLog(id, m)
        case .finished, .stopped, .failed:
            break
        }
    }

    struct CheckpointEvent: Encodable { var name: String; var sha256: String }

    /// Stores buffered metric points and moves the job's progress to the newest of them. A
    /// write the store refuses stops and fails the job (its metrics would be incomplete).
    func flush(_ id: String, _ pending: inout [MetricPoint], log: Logger) {
        guard !pending.isEmpty else { return }
        let points = pending
        pending.removeAll()
        do {
            try store.appendMetrics(points.map { MetricRecord(jobId: id, step: $0.step, kind: $0.kind.rawValue, json: Self.json($0)) })
            try updateProgress(id, with: points)
        } catch {
            fault(id, error, while: "store metrics", log: log)
        }
    }

    private func updateProgress(_ id: String, with points: [MetricPoint]) throws {
        try store.updateProgress(id) { j in
            for p in points {
                j.step = max(j.step, p.step)
                j.epoch = max(j.epoch, p.epoch)
                if let l = p.loss { j.lastLoss = l }
                if let v = p.images_per_second { j.imagesPerSecond = v }
                if let e = p.eta_seconds { j.etaSeconds = e }
                if let k = p.knn_top1 { j.bestKnn = max(j.bestKnn ?? -1, k) }
            }
        }
    }

    static func json(_ value: some Encodable) -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? enc.encode(value)) ?? Data("{}".utf8), as: UTF8.self)
    }

    /// A job's human-readable log (`jobs/<id>/job.log`).
    func appendLog(_ id: String, _ line: String) {
        let url = settings.jobDirectory(id).appendingPathComponent("job.log")
        let text = ISO8601DateFormatter().string(from: Date()) + " " + line + "\n"
        if let h = try? FileHandle(forWritingTo: url) {
            h.seekToEndOfFile()
            h.write(Data(text.utf8))
            try? h.close()
        } else {
            try? Data(text.utf8).write(to: url)
        }
    }

    // MARK: - Live events

    public func subscribe(_ id: String, _ handler: @escaping @Sendable (JobStreamEvent) -> Void) -> UUID {
        let token = UUID()
        lock.lock(); subscribers[id, default: [:]][token] = handler; lock.unlock()
        return token
    }

    public func unsubscribe(_ id: String, _ token: UUID) {
        lock.lock(); subscribers[id]?[token] = nil; lock.unlock()
    }

    func publish(_ id: String, _ event: JobStreamEvent) {
        lock.lock(); let subs = subscribers[id].map { Array($0.values) } ?? []; lock.unlock()
        for s in subs { s(event) }
    }

    func publishState(_ j: JobRecord, reason: String) {
        publish(j.id, .state(j.state, reason: reason))
        if j.state == .running { appendLog(j.id, "state: running (\(reason))") }
    }
}

/// A normal-priority thread whose only work is to create other threads: threads inherit the
/// scheduling class and nice value of their creator, and HTTP handlers run at a lower priority.
final class Launcher: @unchecked Sendable {
    /// Safe to share: `pending` is guarded by `cond`.
    private let cond = NSCondition()
    private var pending: [(String, @Sendable () -> Void)] = []

    init() {
        let t = Thread { [self] in loop() }
        t.name = "mocod-launcher"
        t.start()
    }

    private func loop() {
        while true {
            cond.lock()
            while pending.isEmpty { cond.wait() }
            let (name, body) = pending.removeFirst()
            cond.unlock()
            let t = Thread { body() }
            t.name = name
            t.stackSize = 8 << 20
            t.start()
        }
    }

    /// Starts `body` on a new thread created by the launcher; returns at once.
    func start(name: String, _ body: @escaping @Sendable () -> Void) {
        cond.lock()
        pending.append((name, body))
        cond.signal()
        cond.unlock()
    }
}

/// The daemon's end of one worker process: its process and its command channel.
final class WorkerHandle: @unchecked Sendable {
    /// Safe to share: writes to `input` are serialized by `lock`; `process` is only read.
    let process: Process
    private let input: FileHandle
    private let lock = NSLock()
    private var closed = false

    init(process: Process, input: FileHandle) { self.process = process; self.input = input }

    /// Sends a command (a JSON line); a worker that is gone is ignored.
    func send(_ command: WorkerCommand) {
        guard var line = try? JSONEncoder().encode(command) else { return }
        line.append(0x0a)
        lock.lock(); defer { lock.unlock() }
        guard !closed else { return }
        let fd = input.fileDescriptor
        _ = line.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }

    func close() {
        lock.lock(); defer { lock.unlock() }
        guard !closed else { return }
        closed = true
        try? input.close()
    }
}
