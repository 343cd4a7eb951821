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

/// The I/O shell of the daemon's scheduler. Every decision (which job runs on which cores, a
/// worker restart, a job's end) is made by the pure `Scheduling` machine; this class feeds it
/// inputs under one lock and carries out its actions: the store's transitions, worker processes
/// (`WorkerLaunch`), their events (`JobRecorder`) and the live streams (`LiveEvents`).
public final class Scheduler: @unchecked Sendable {
    /// Safe to share: `machine`, `workers` and `pendingTransitions` are guarded by `lock`; the
    /// store, `events` and the launcher are thread-safe; settings are immutable.
    public let store: JobStore
    public let settings: DaemonSettings
    let logger: Logger
    private let lock = NSLock()
    private var machine: Scheduling
    /// Creates the job threads, so they inherit its normal priority (see `runJob`).
    private let launcher = Launcher()
    /// The worker process of each running job.
    private var workers: [String: WorkerHandle] = [:]
    /// Transitions decided but not yet in the store (it refused the write): retried until they
    /// land; meanwhile reads show the job in its new state (see `current`).
    private var pendingTransitions: [String: PendingTransition] = [:]
    let events = LiveEvents()
    private var lastProbe = Date.distantPast
    public let started = Date()
    private var steps = 0
    public var stepsTotal: Int { lock.lock(); defer { lock.unlock() }; return steps }

    /// Told the number of running jobs whenever it changes (mocod limits the API's CPU while it is above 0).
    private let onRunningCountChange: @Sendable (Int) -> Void

    /// - Throws: when jobs would be pinned (`maxRunning` above 1) to more cores than this
    ///   process may run on.
    public init(store: JobStore, settings: DaemonSettings, logger: Logger,
                onRunningCountChange: @escaping @Sendable (Int) -> Void = { _ in }) throws {
        self.store = store
        self.settings = settings
        self.logger = logger
        self.onRunningCountChange = onRunningCountChange
        var cores = Array(0..<max(1, settings.threads))
        // (An affinity mask that cannot be read leaves the cores numbered from 0.)
        if settings.maxRunning > 1, case let allowed = Self.allowedCores(), !allowed.isEmpty {
            guard allowed.count >= settings.threads else {
                throw JobError(.invalid, "--threads \(settings.threads) is more than the \(allowed.count) core(s) this process may run on "
                    + "(\(allowed.map(String.init).joined(separator: ","))); with --max-running above 1 each thread is pinned to a core of its own")
            }
            cores = Array(allowed.prefix(settings.threads))
        }
        machine = Scheduling(maxRunning: settings.maxRunning, cores: cores, slots: settings.mpi.map { SlotPool(hosts: $0.hosts) })
        // Commands go to workers over pipes: a worker that died must not take the daemon with it.
        signal(SIGPIPE, SIG_IGN)
    }

    /// The cores this process may run on (its affinity mask), ascending.
    static func allowedCores() -> [Int] {
        var allowed = [Int32](repeating: 0, count: 1024)
        let n = allowed.withUnsafeMutableBufferPointer { mocod_allowed_cores($0.baseAddress, Int32($0.count)) }
        return n > 0 ? allowed.prefix(Int(n)).map(Int.init) : []
    }

    // MARK: - The machine

    /// Feeds one input to the machine and carries out its actions.
    private func feed(_ input: Scheduling.Input) {
        perform(decide(input))
    }

    /// Feeds one input; returns the actions (the caller carries them out).
    private func decide(_ input: Scheduling.Input) -> [Scheduling.Action] {
        lock.lock(); defer { lock.unlock() }
        let before = machine.running.count
        let actions = machine.next(input)
        // Told under the lock, so two changes are never reported out of order.
        if machine.running.count != before { onRunningCountChange(machine.running.count) }
        return actions
    }

    /// Carries out actions in order; inputs they cause (a refused launch) add their actions to
    /// the same work list rather than nest.
    private func perform(_ actions: [Scheduling.Action]) {
        var work = actions[...]
        while let action = work.popFirst() {
            switch action {
            case .launch(let id, _, let cores, let hosts):
                if let refused = launch(id, cores: cores, hosts: hosts) { work += decide(refused) }
            case .stop(let id, let event):
                lock.lock(); let worker = workers[id]; lock.unlock()
                worker?.send(Self.command(for: event))
            case .transition(let id, let event, let reason):
                do {
                    let j = try store.apply(event, to: id, reason: reason)
                    publishState(j, reason: reason)
                } catch {
                    logger.warning("transition not recorded", metadata: ["job.id": "\(id)", "error": "\(error)"])
                }
            case .restart, .end:
                // Only a job's own thread gets these (from `workerExited`), and handles them there.
                assertionFailure("\(action) outside its job's thread")
            }
        }
    }

    /// Marks the job running and starts its thread. A job the store will not start returns the
    /// input that says so: dropped when it is no longer queued there, else (the store cannot be
    /// written) put back, with launches retried a second later.
    private func launch(_ id: String, cores: [Int]?, hosts: [HostSlots]?) -> Scheduling.Input? {
        let job: JobRecord
        do { job = try store.apply(.start, to: id, reason: "scheduled") } catch {
            logger.warning("job not started", metadata: ["job.id": "\(id)", "error": "\(error)"])
            if let e = error as? JobError, e.code == .invalidState || e.code == .notFound { return .launchRefused(id, retry: false) }
            DispatchQueue.global().asyncAfter(deadline: .now() + 1) { [self] in feed(.retryLaunches) }
            return .launchRefused(id, retry: true)
        }
        publishState(job, reason: "scheduled")
        launcher.start(name: "mocod-job") { [self] in runJob(job, cores: cores, hosts: hosts) }
        return nil
    }

    static func command(for event: JobEvent) -> WorkerCommand {
        switch event {
        case .pause: WorkerCommand(.pause)
        case .cancel: WorkerCommand(.cancel)
        default: WorkerCommand(.shutdown)
        }
    }

    /// The machine's view of a stored job.
    static func queued(_ j: JobRecord) -> Scheduling.Queued {
        if j.kind != .train {
            // An evaluation or embedding: one local worker with its threads; one restart.
            let spec = try? JSONDecoder().decode(EvaluationSpec.self, from: Data(j.spec.utf8))
            return Scheduling.Queued(id: j.id, priority: j.priority, seq: j.seq ?? 0, threads: spec?.threads ?? 1,
                                     restarts: j.restarts, maxRestarts: 1, processes: 1)
        }
        let spec = try? JobSpec.parse(Data(j.spec.utf8))
        return Scheduling.Queued(id: j.id, priority: j.priority, seq: j.seq ?? 0, threads: spec?.threads ?? 1,
                                 restarts: j.restarts, maxRestarts: spec?.max_restarts ?? 0, processes: spec?.distributed.processes ?? 1)
    }

    // MARK: - Health

    /// A transition the store has not taken yet.
    struct PendingTransition: Sendable {
        var event: JobEvent
        var reason: String
        var since: Date
    }

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
        j.reason = p.reason
        return j
    }

    /// Whether any job has a transition waiting for the store (reads must not be cached then).
    public var hasPendingTransitions: Bool { lock.lock(); defer { lock.unlock() }; return !pendingTransitions.isEmpty }

    /// The job by id as clients should see it (see `current`).
    public func job(_ id: String) throws -> JobRecord? { try store.job(id).map(current) }

    // MARK: - Requests

    /// Submits a job: validated, stored (committed before returning), then queued.
    public func submit(_ body: Data, idempotencyKey: String?, priority: Int) throws -> (JobRecord, Bool) {
        guard isAccepting else { throw JobError(.unavailable, "the daemon is shutting down") }
        let spec = try validate(body).get()
        let canonical = spec.canonicalJSON()
        let record = JobRecord(id: "job_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(16),
                               name: spec.name, spec: canonical, priority: priority, idempotencyKey: idempotencyKey,
                               bodyHash: idempotencyKey == nil ? nil : SHA256.hex(body))
        let (job, created) = try store.create(record)
        if created {
            publishState(job, reason: "submitted")
            feed(.submitted(Self.queued(job)))
        }
        return (job, created)
    }

    /// Submits an evaluation (`embedding` false) or an embedding of a training job's checkpoint:
    /// validated like a job spec (field by field; the checkpoint must be the job's, the data under
    /// the roots), stored as a job of its own kind under the training job, then queued.
    public func submitEvaluation(of parentID: String, _ body: Data, embedding: Bool) throws -> JobRecord {
        guard isAccepting else { throw JobError(.unavailable, "the daemon is shutting down") }
        guard let parent = try job(parentID) else { throw JobError(.notFound, "no job \(parentID)") }
        guard parent.kind == .train else {
            throw JobError(.invalid, "evaluations and embeddings are made of a training job's checkpoints; \(parentID) is an \(parent.kind.rawValue)")
        }
        var spec = try EvaluationSpec.parse(body, embedding: embedding)
        var issues: [FieldIssue] = []
        let checkpoints = try store.checkpoints(parentID)
        if spec.checkpoint == "latest" {
            if let last = checkpoints.last { spec.checkpoint = last.name } else {
                issues.append(FieldIssue("checkpoint", "job \(parentID) has no checkpoint yet"))
            }
        } else if !checkpoints.contains(where: { $0.name == spec.checkpoint }) {
            issues.append(FieldIssue("checkpoint", "job \(parentID) has no checkpoint \(spec.checkpoint)"
                + (checkpoints.isEmpty ? "" : " (it has \(checkpoints.map(\.name).joined(separator: ", ")))")))
        }
        for (field, source) in [("data", spec.data)] + (spec.train_data.map { [("train_data", $0)] } ?? []) {
            do { _ = try DataSources.locate(source, roots: settings.dataRoots, allowAbsolute: false) } catch {
                issues.append(FieldIssue("\(field).path", error.message))
            }
        }
        let training = try? JobSpec.parse(Data(parent.spec.utf8))
        spec.threads = spec.threads ?? min(training?.threads ?? 1, settings.threads)
        if let threads = spec.threads, threads > settings.threads {
            issues.append(FieldIssue("threads", "must be at most \(settings.threads) (the daemon's thread budget)"))
        }
        if spec.kind == .knn {
            spec.k = spec.k ?? training?.eval?.knn_k ?? 200
            spec.t = spec.t ?? training?.eval?.knn_t ?? 0.1
        }
        guard issues.isEmpty else { throw SpecError(issues) }
        var record = JobRecord(id: "job_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(16),
                               name: "\(parent.name): \(spec.kind.rawValue)", spec: spec.canonicalJSON(), priority: parent.priority)
        record.kind = embedding ? .embedding : .evaluation
        record.parentId = parentID
        let (job, _) = try store.create(record)
        publishState(job, reason: "submitted")
        appendLog(parentID, "\(spec.kind.rawValue) \(job.id) of checkpoint \(spec.checkpoint) submitted")
        feed(.submitted(Self.queued(job)))
        return job
    }

    public func cancel(_ id: String) throws -> JobRecord { try stop(id, .cancel) }

    public func pause(_ id: String) throws -> JobRecord {
        if let j = try job(id), j.kind != .train {
            throw JobError(.invalidState, "an \(j.kind.rawValue) cannot be paused (it keeps no checkpoint); cancel it and submit it again")
        }
        return try stop(id, .pause)
    }

    /// A running job is asked to checkpoint and stop; any other goes through the state machine
    /// at once (the store's answer is the caller's).
    private func stop(_ id: String, _ event: JobEvent) throws -> JobRecord {
        guard try job(id) != nil else { throw JobError(.notFound, "no job \(id)") }
        try refuseWhileEnding(id)
        var actions = decide(.stopRequested(id, event))
        // The one transition of a job without a slot is applied here, so its error reaches the client.
        if case .transition(_, let e, let reason)? = actions.first {
            actions.removeFirst()
            do {
                let r = try store.apply(e, to: id, reason: reason)
                publishState(r, reason: reason)
            } catch {
                // Still queued in the store (it could not be written): it stays in the queue.
                if let j = try? store.job(id), j.state == .queued { feed(.submitted(Self.queued(j))) }
                perform(actions)
                throw error
            }
        }
        perform(actions)
        guard let j = try job(id) else { throw JobError(.notFound, "no job \(id)") }
        return j
    }

    public func resume(_ id: String) throws -> JobRecord {
        try refuseWhileEnding(id)
        let r = try store.apply(.resume, to: id, reason: "resumed by request")
        publishState(r, reason: "resumed by request")
        feed(.submitted(Self.queued(r)))
        return r
    }

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
        let children = try store.jobs(parent: id, limit: 100_000).map(current)
        if let open = children.first(where: { !$0.state.isTerminal }) {
            throw JobError(.invalidState, "its \(open.kind.rawValue) \(open.id) is \(open.state.rawValue); cancel it first")
        }
        try store.delete(id)   // and its evaluations and embeddings (the store cascades)
        for child in children { try? FileManager.default.removeItem(at: settings.jobDirectory(child.id)) }
        try? FileManager.default.removeItem(at: settings.jobDirectory(id))
    }

    public var runningCount: Int { lock.lock(); defer { lock.unlock() }; return machine.running.count }

    /// MPI slots no running distributed job holds (nil: no hostfile).
    public var mpiSlotsFree: Int? { lock.lock(); defer { lock.unlock() }; return machine.slots?.freeCount }

    public var isAccepting: Bool { lock.lock(); defer { lock.unlock() }; return machine.accepting }

    // MARK: - Daemon start and stop

    /// Starts scheduling: jobs that were running when the daemon stopped go back to the queue
    /// first (they resume from their newest valid checkpoint, in their place by priority and
    /// submission); a store that cannot record that stops the start.
    public func recover() throws {
        for j in try store.jobs(state: .running, limit: Int.max) {
            do {
                _ = try store.apply(.interrupt, to: j.id, reason: "daemon restarted; resuming from the last valid checkpoint")
            } catch let e as JobError where e.code == .invalidState || e.code == .notFound {
                continue   // a request (cancel, delete) got to it first
            }
        }
        feed(.daemonStarted(queued: try store.jobs(state: .queued, limit: Int.max).map(Self.queued)))
    }

    /// Stops accepting, asks running jobs to checkpoint and stop, and waits for them.
    public func shutdown(timeout: Double = 120) {
        feed(.shutdown)
        let deadline = Date().addingTimeInterval(timeout)
        while (runningCount > 0 || hasPendingTransitions) && Date() < deadline { usleep(50_000) }
    }

    // MARK: - Running one job (on its own thread)

    private func runJob(_ job: JobRecord, cores held: [Int]?, hosts: [HostSlots]?) {
        // New threads inherit their creator's scheduling class and nice value. Job threads are
        // started by the launcher thread (normal priority), never by an HTTP thread (which runs
        // at a lower priority); the worker processes they start inherit it too.
        var param = sched_param()
        param.sched_priority = 0
        _ = pthread_setschedparam(pthread_self(), 0 /* SCHED_OTHER */, &param)
        let id = job.id
        var log = logger
        log[metadataKey: "job.id"] = "\(id)"
        let dir = settings.jobDirectory(id)
        let recorder = JobRecorder(id: id, store: store, directory: dir, log: log, events: events,
                                   fault: { [self] error, doing in fault(id, error, while: doing, log: log) },
                                   countStep: { [self] in lock.lock(); steps += 1; lock.unlock() })
        var end: WorkerEnd
        do {
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            if job.kind == .train {
                let spec = try JobSpec.parse(Data(job.spec.utf8))
                try SafeTensorsFile.writeDurably(Data(job.spec.utf8), to: dir.appendingPathComponent("spec.json"))
                recorder.syncCheckpointsOnDisk(spec)
                recorder.syncMetricsOnDisk(spec)
            } else {
                // The worker reads its task (and the training job's checkpoint) from its folder.
                let spec = try JSONDecoder().decode(EvaluationSpec.self, from: Data(job.spec.utf8))
                guard let parent = job.parentId else { throw JobError(.internalError, "an \(job.kind.rawValue) without its training job") }
                let checkpoint = settings.jobDirectory(parent).appendingPathComponent("checkpoints").appendingPathComponent(spec.checkpoint)
                let task = WorkerTask(evaluation: spec, checkpointPath: checkpoint.path)
                try SafeTensorsFile.writeDurably(try JSONEncoder().encode(task), to: dir.appendingPathComponent(WorkerTask.fileName))
            }
            end = runWorker(recorder, cores: held, hosts: hosts)
        } catch {
            end = .failed("\(error)")
        }
        while true {
            var actions = decide(.workerExited(id, end))
            guard let first = actions.first else { return }
            actions.removeFirst()
            perform(actions)
            switch first {
            case .restart(_, let attempt, let max, let reason):
                // An unstored count would let a later daemon restart the job more often than its spec says.
                do { try store.updateProgress(id) { $0.restarts = attempt } } catch { fault(id, error, while: "record the restart count", log: log) }
                recorder.appendLog("restarting the worker from the newest valid checkpoint (restart \(attempt) of \(max))")
                publish(id, JobStreamEvent(.restart, JobStreamEvent.RestartData(reason: reason, restart: attempt, max_restarts: max)))
                end = runWorker(recorder, cores: held, hosts: hosts)
            case .end(_, let event, var reason):
                // An evaluation's success says what it found.
                if event == .finish, job.kind != .train, let summary = recorder.resultSummary { reason = summary }
                endJob(id, event, reason: publicReason(reason, job: id), log: log)
                feed(.coresFreed(id))
                return
            default:
                perform([first])
                return
            }
        }
    }

    /// Runs the job's worker once and reports how it ended.
    private func runWorker(_ recorder: JobRecorder, cores: [Int]?, hosts: [HostSlots]?) -> WorkerEnd {
        let id = recorder.id
        let exit = WorkerLaunch(command: settings.workerCommand, dataRoots: settings.dataRoots, mpi: settings.mpi).run(
            directory: recorder.directory, cores: cores, hosts: hosts, log: recorder.log,
            started: { worker in
                lock.lock()
                workers[id] = worker
                let running = machine.running[id]
                lock.unlock()
                // Asked to stop, or faulted, before it started.
                if let stop = running?.stop { worker.send(Self.command(for: stop)) }
                else if running?.fault != nil { worker.send(WorkerCommand(.shutdown)) }
            },
            onEvent: { recorder.record($0) })
        recorder.flush()
        lock.lock(); workers[id] = nil; lock.unlock()
        switch exit.last?.kind {
        case .finished?: return .finished
        case .failed?: return .failed(exit.last?.message ?? "the worker failed")
        case .stopped?: return .stopped
        default:
            recorder.appendLog("worker exited abnormally: \(exit.description)")
            recorder.log.warning("worker exited abnormally", metadata: ["reason": "\(exit.description)"])
            return .abnormal(exit.description)
        }
    }

    /// Records a job's end: retried (with back-off) while the store refuses it, so the end is
    /// never lost and the job never reads as running meanwhile (see `current`).
    private func endJob(_ id: String, _ event: JobEvent, reason: String, log: Logger) {
        lock.lock()
        pendingTransitions[id] = PendingTransition(event: event, reason: reason, since: Date())
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

    /// A store write for a running job failed: the job stops at its next step and fails.
    private func fault(_ id: String, _ error: Error, while doing: String, log: Logger) {
        let why = (error as? JobError)?.message ?? "\(error)"
        let actions = decide(.faulted(id, reason: "could not \(doing): \(why)"))
        if !actions.isEmpty { log.error("job store write failed; stopping the job", metadata: ["error": "\(why)"]) }
        perform(actions)
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

    // MARK: - Live events

    /// Set once `closeStreams` ran: a stream opened later ends at once.
    public var areStreamsClosed: Bool { events.isClosed }

    public func subscribe(_ id: String, _ handler: @escaping @Sendable (JobStreamEvent) -> Void) -> UUID {
        events.subscribe(id, handler)
    }

    public func unsubscribe(_ id: String, _ token: UUID) { events.unsubscribe(id, token) }

    /// How many live event streams follow the job now.
    public func streamCount(_ id: String) -> Int { events.subscriberCount(id) }

    /// Ends every live event stream with a final `shutdown` event (the daemon is stopping).
    public func closeStreams() { events.close() }

    func publish(_ id: String, _ event: JobStreamEvent) { events.publish(id, event) }

    func publishState(_ j: JobRecord, reason: String) {
        // The line first: a stream that ends with the state event has had it.
        appendLog(j.id, "state: \(j.state.rawValue) (\(reason))")
        publish(j.id, .state(j.state, reason: reason))
    }

    /// A line in the job's log, and a live `log` event.
    func appendLog(_ id: String, _ line: String) { events.appendLog(id, line, directory: settings.jobDirectory(id)) }
}
