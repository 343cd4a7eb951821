/// How a job's worker process ended.
public enum WorkerEnd: Sendable, Equatable {
    /// Its last event said the run finished all epochs.
    case finished
    /// Its last event said it stopped (after a command or a signal), with a checkpoint.
    case stopped
    /// Its last event said the run failed (a data error, a non-finite loss, a full disk...).
    case failed(String)
    /// It exited without a last event (a signal, the out-of-memory killer, a non-zero status).
    case abnormal(String)
}

/// The supervisor's decision when a worker ends, as a pure function (tested as a table): end
/// the job with a transition, or start the worker again from the job's newest valid checkpoint.
public enum Supervision {
    public enum Decision: Sendable, Equatable {
        /// Start the worker again; `attempt` counts restarts from 1.
        case restart(attempt: Int)
        /// Apply `event` to the job with `reason`.
        case end(JobEvent, reason: String)
    }

    /// - Parameters:
    ///   - stopRequest: the stop asked of the job (pause, cancel, or interrupt for the daemon's shutdown), if any.
    ///   - faulted: the job's progress could not be stored (it fails whatever the worker says).
    ///   - restarts: restarts so far.
    public static func decide(_ end: WorkerEnd, stopRequest: JobEvent?, faulted: Bool, restarts: Int, maxRestarts: Int) -> Decision {
        switch end {
        case .finished:
            return .end(.finish, reason: "finished all epochs")
        case .failed(let reason):
            return .end(.fail, reason: reason)
        case .stopped:
            guard let stopRequest else { return .end(.interrupt, reason: "stopped") }
            return .end(stopRequest, reason: stopRequest == .interrupt ? "daemon stopping; checkpointed" : "\(stopRequest.rawValue) by request; checkpointed")
        case .abnormal(let why):
            // The daemon is stopping: the job goes back to the queue and resumes from its checkpoint.
            if stopRequest == .interrupt { return .end(.interrupt, reason: "daemon stopping; worker ended: \(why)") }
            // Asked to pause or cancel: that is what happens (a paused job resumes from its newest checkpoint).
            if let stopRequest { return .end(stopRequest, reason: "\(stopRequest.rawValue) by request; worker ended: \(why)") }
            if restarts < maxRestarts && !faulted { return .restart(attempt: restarts + 1) }
            let tail = restarts > 0 ? " (after \(restarts) restart\(restarts == 1 ? "" : "s"))" : ""
            return .end(.fail, reason: "worker \(why)\(tail)")
        }
    }
}
