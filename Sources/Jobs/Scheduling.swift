/// The daemon's scheduler as a pure state machine (tested as a table, like `Lifecycle`): which
/// jobs run, on which cores, and what happens when a worker ends. The daemon's `Scheduler` is its
/// I/O shell: it feeds inputs in (under one lock) and carries the actions out (the store, the
/// worker processes, the live events).
///
/// - A job starts when a slot is free and, with more than one job at a time, as many cores as
///   it has threads are free: the queue waits (first by priority, then by submission) rather
///   than cut a job's threads or skip ahead of it.
/// - A job holds its slot and cores from its launch until the shell reports its end recorded
///   (`coresFreed`).
/// - A distributed job (more than one process) takes as many MPI slots as it has ranks from the
///   `SlotPool` instead of local cores, one on the hostfile's first host (rank 0's), and waits at
///   the head of the queue until they are free.
///   One that needs more slots than the daemon has (its hostfile shrank since it was queued)
///   fails with the reason rather than block the queue.
/// - An abnormal worker exit restarts the worker (`Supervision.decide`) up to the job's limit;
///   the count is the job's own and survives daemon restarts through the store.
public struct Scheduling: Sendable, Equatable {
    /// A job waiting for a slot.
    public struct Queued: Sendable, Equatable {
        public var id: String
        public var priority: Int
        /// Submission order (the store's `seq`): earlier first among equal priorities.
        public var seq: Int64
        public var threads: Int
        /// Restarts the job has used so far (across daemon restarts).
        public var restarts: Int
        public var maxRestarts: Int
        /// Its MPI ranks (`distributed.processes`); 1: a local worker.
        public var processes: Int
        public init(id: String, priority: Int = 0, seq: Int64, threads: Int = 1, restarts: Int = 0, maxRestarts: Int = 2, processes: Int = 1) {
            self.id = id; self.priority = priority; self.seq = seq; self.threads = threads
            self.restarts = restarts; self.maxRestarts = maxRestarts; self.processes = processes
        }
    }

    /// A job with a slot: its worker runs, or it is ending.
    public struct Running: Sendable, Equatable {
        public var job: Queued
        /// The cores it is pinned to (nil: one job at a time, not pinned).
        public var cores: [Int]?
        /// A distributed job's MPI slots, host by host (nil: a local worker).
        public var hosts: [HostSlots]?
        /// The stop asked of it: pause, cancel, or interrupt (the daemon is stopping).
        public var stop: JobEvent?
        /// Why it must fail whatever its worker says (its progress could not be stored).
        public var fault: String?
        /// Its end is decided; the shell is recording it.
        public var ending: Bool = false
        /// It ends back in the queue (interrupted): it waits there again once its end is recorded.
        public var requeue: Bool = false
    }

    public enum Input: Sendable, Equatable {
        /// The daemon started, with the store's queue (jobs whose daemon died while they ran are
        /// in it: the shell has put them back first).
        case daemonStarted(queued: [Queued])
        /// A job entered the queue (submitted, or resumed after a pause).
        case submitted(Queued)
        /// A user asked to pause or cancel the job.
        case stopRequested(String, JobEvent)
        /// The daemon is stopping: every running job checkpoints and goes back to the queue.
        case shutdown
        /// The job's progress could not be stored: it stops and fails.
        case faulted(String, reason: String)
        /// The job's worker process ended.
        case workerExited(String, WorkerEnd)
        /// The job's end is recorded: its slot and cores are free.
        case coresFreed(String)
        /// The store would not mark the job running. `retry`: it could not be written (the job
        /// goes back to its place and launches wait for `retryLaunches`); otherwise the job is no
        /// longer queued there (cancelled or deleted meanwhile) and is dropped.
        case launchRefused(String, retry: Bool)
        /// Try launching again after a refused launch.
        case retryLaunches
    }

    public enum Action: Sendable, Equatable {
        /// Mark the job running and start its worker with `threads` threads on `cores`, or (a
        /// distributed job) its ranks on `hosts`.
        case launch(String, threads: Int, cores: [Int]?, hosts: [HostSlots]? = nil)
        /// Send the worker the command for `event` (pause, cancel; interrupt is the daemon's shutdown).
        case stop(String, JobEvent)
        /// Start the job's worker again from its newest valid checkpoint (`attempt` of `of`).
        case restart(String, attempt: Int, of: Int, reason: String)
        /// End the job with `event` (`.fail` marks it failed), recorded until the store takes it;
        /// the shell answers with `coresFreed`.
        case end(String, JobEvent, reason: String)
        /// Apply `event` to a job without a worker (queued, paused, or ending) and let the store's
        /// state machine decide.
        case transition(String, JobEvent, reason: String)
    }

    public let maxRunning: Int
    public private(set) var cores: CorePool
    /// The MPI slots distributed jobs run on (nil: the daemon has no hostfile).
    public private(set) var slots: SlotPool?
    /// Waiting jobs in launch order.
    public private(set) var queue: [Queued] = []
    public private(set) var running: [String: Running] = [:]
    public private(set) var accepting = true
    /// Nothing launches before `daemonStarted` (the store's queue comes first).
    public private(set) var started = false
    /// A launch could not be stored: none is tried until `retryLaunches`.
    public private(set) var launchesHeld = false

    /// - Parameters:
    ///   - maxRunning: jobs at once; above 1, each job is pinned to cores of its own.
    ///   - cores: the cores jobs may use.
    ///   - slots: the MPI slots distributed jobs may use.
    public init(maxRunning: Int, cores: [Int], slots: SlotPool? = nil) {
        self.maxRunning = max(1, maxRunning)
        self.cores = CorePool(cores: cores)
        self.slots = slots
    }

    /// Whether jobs are pinned to cores of their own.
    public var pins: Bool { maxRunning > 1 }

    /// Takes one input; returns what the shell must do, in order.
    public mutating func next(_ input: Input) -> [Action] {
        var actions: [Action] = []
        switch input {
        case .daemonStarted(let queued):
            started = true
            let ids = Set(queued.map(\.id))
            queue = (queue.filter { !ids.contains($0.id) } + queued.filter { running[$0.id] == nil }).sorted(by: Self.launchesBefore)
        case .submitted(let j):
            if var r = running[j.id] {
                // Resumed in the moment between its end being stored and its slot freed: it
                // waits in the queue again once the slot is free (keeping the restarts it used).
                if r.ending {
                    var job = j
                    job.restarts = max(j.restarts, r.job.restarts)
                    r.job = job
                    r.requeue = true
                    running[j.id] = r
                }
                return []
            }
            enqueue(j)
        case .stopRequested(let id, let event):
            let reason = "\(event == .cancel ? "cancelled" : "paused") by request"
            if var r = running[id] {
                if r.ending {
                    // Its worker is gone: the store decides (a paused job can be cancelled), and a
                    // resume that was waiting for the slot is void.
                    r.requeue = false
                    running[id] = r
                    return [.transition(id, event, reason: reason)]
                }
                r.stop = event
                running[id] = r
                return [.stop(id, event)]
            }
            queue.removeAll { $0.id == id }
            // A job leaving the head of the queue may unblock the ones behind it.
            return [.transition(id, event, reason: reason)] + fill()
        case .shutdown:
            accepting = false
            for id in running.keys.sorted() where !(running[id]!.ending) {
                running[id]!.stop = .interrupt
                actions.append(.stop(id, .interrupt))
            }
            return actions
        case .faulted(let id, let reason):
            guard var r = running[id], !r.ending, r.fault == nil else { return [] }
            r.fault = reason
            running[id] = r
            return [.stop(id, .interrupt)]
        case .workerExited(let id, let workerEnd):
            guard var r = running[id], !r.ending else { return [] }
            switch Supervision.decide(workerEnd, stopRequest: r.stop, faulted: r.fault != nil,
                                      restarts: r.job.restarts, maxRestarts: r.job.maxRestarts) {
            case .restart(let attempt):
                r.job.restarts = attempt
                running[id] = r
                let why: String
                if case .abnormal(let w) = workerEnd { why = w } else { why = "the worker ended" }
                return [.restart(id, attempt: attempt, of: r.job.maxRestarts, reason: why)]
            case .end(var event, var reason):
                // Progress that could not be stored fails the job with that reason, whatever the
                // worker made of the stop (a failure the worker reports itself keeps its own reason).
                if let fault = r.fault {
                    if case .failed = workerEnd {} else { (event, reason) = (.fail, fault) }
                }
                r.ending = true
                r.requeue = event == .interrupt
                running[id] = r
                return [.end(id, event, reason: reason)]
            }
        case .coresFreed(let id):
            guard let r = running.removeValue(forKey: id) else { return [] }
            if let c = r.cores { cores.give(c) }
            if let h = r.hosts { slots?.give(h) }
            if r.requeue { enqueue(r.job) }
        case .launchRefused(let id, let retry):
            guard let r = running.removeValue(forKey: id) else { return [] }
            if let c = r.cores { cores.give(c) }
            if let h = r.hosts { slots?.give(h) }
            if retry {
                enqueue(r.job)
                launchesHeld = true
                return []
            }
        case .retryLaunches:
            launchesHeld = false
        }
        return actions + fill()
    }

    /// Launches queued jobs while a slot (and, pinned, their cores) is free.
    private mutating func fill() -> [Action] {
        var actions: [Action] = []
        while started && accepting && !launchesHeld && running.count < maxRunning, let head = queue.first {
            var held: [Int]?
            var hosts: [HostSlots]?
            if head.processes > 1 {
                let total = slots?.total ?? 0
                guard head.processes <= total else {
                    queue.removeFirst()
                    actions.append(.transition(head.id, .fail, reason: "needs \(head.processes) MPI slots; this daemon has \(total)"
                        + (slots == nil ? " (start it with --mpi-hostfile)" : " (its --mpi-hostfile)")))
                    continue
                }
                guard let h = slots?.take(head.processes) else { break }
                hosts = h
            } else if pins {
                guard let c = cores.take(head.threads) else { break }
                held = c
            }
            queue.removeFirst()
            running[head.id] = Running(job: head, cores: held, hosts: hosts)
            actions.append(.launch(head.id, threads: head.threads, cores: held, hosts: hosts))
        }
        return actions
    }

    private mutating func enqueue(_ j: Queued) {
        guard running[j.id] == nil else { return }
        queue.removeAll { $0.id == j.id }
        let at = queue.firstIndex { Self.launchesBefore(j, $0) } ?? queue.endIndex
        queue.insert(j, at: at)
    }

    /// Queue order: higher priority first, then earlier submission.
    static func launchesBefore(_ a: Queued, _ b: Queued) -> Bool {
        a.priority != b.priority ? a.priority > b.priority : a.seq < b.seq
    }
}
