import Foundation

/// Where a job is in its life. `succeeded`, `failed` and `cancelled` are terminal.
public enum JobState: String, Codable, Sendable, CaseIterable {
    case queued, running, paused, succeeded, failed, cancelled

    public var isTerminal: Bool { self == .succeeded || self == .failed || self == .cancelled }
}

/// What can happen to a job.
public enum JobEvent: String, Sendable, Equatable {
    /// The scheduler gave it a slot.
    case start
    /// Training reached its last epoch.
    case finish
    /// Training stopped on a fault.
    case fail
    /// A user asked to cancel.
    case cancel
    /// A user asked to pause (checkpoint, then free the slot).
    case pause
    /// A user asked to resume a paused job (back to the queue).
    case resume
    /// The daemon stopped while the job ran; it goes back to the queue and resumes from its checkpoint.
    case interrupt
}

/// An error a client can act on, with the HTTP status it maps to.
public struct JobError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case notFound = "not_found", conflict = "conflict", invalidState = "invalid_state", invalid = "invalid_request"
        case unavailable = "unavailable", internalError = "internal"
        /// The store (or the disk under it) cannot be written: full, read-only or failing.
        case storage = "insufficient_storage"
    }
    public let code: Code
    public let message: String
    public init(_ code: Code, _ message: String) { self.code = code; self.message = message }
    public var description: String { "\(code.rawValue): \(message)" }
}

/// The job state machine as a pure function: the next state, or why the event does not apply.
public enum Lifecycle {
    public static func next(_ state: JobState, _ event: JobEvent) -> Result<JobState, JobError> {
        switch (state, event) {
        case (.queued, .start): return .success(.running)
        case (.queued, .cancel), (.paused, .cancel), (.running, .cancel): return .success(.cancelled)
        case (.running, .finish): return .success(.succeeded)
        case (.running, .fail), (.queued, .fail): return .success(.failed)
        case (.running, .pause): return .success(.paused)
        case (.queued, .pause): return .success(.paused)
        case (.paused, .resume): return .success(.queued)
        case (.running, .interrupt): return .success(.queued)
        default:
            return .failure(JobError(.invalidState, "cannot \(event.rawValue) a job that is \(state.rawValue)"))
        }
    }
}
