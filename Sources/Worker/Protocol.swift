import Foundation
import MoCo

/// The daemon's word to a worker: one JSON line on the worker's standard input. End of input
/// (the daemon is gone) counts as `shutdown`.
public struct WorkerCommand: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// Checkpoint at the next step and stop; the job is paused.
        case pause
        /// Checkpoint at the next step and stop; the job is cancelled.
        case cancel
        /// The daemon is stopping (or cannot record the job's progress): checkpoint and stop.
        case shutdown
    }
    public var kind: Kind
    public init(_ kind: Kind) { self.kind = kind }
}

/// An evaluation or embedding job's task, written by the daemon into the job's folder (the
/// worker runs it instead of training): what to do, and the training job's checkpoint file.
public struct WorkerTask: Codable, Sendable, Equatable {
    public static let fileName = "task.json"
    public var evaluation: EvaluationSpec
    public var checkpointPath: String
    public init(evaluation: EvaluationSpec, checkpointPath: String) { self.evaluation = evaluation; self.checkpointPath = checkpointPath }
}

/// A checkpoint as the worker wrote it: the file's name, digest and size, and its metadata.
public struct CheckpointWritten: Codable, Sendable, Equatable {
    public var name: String
    public var sha256: String
    public var bytes: Int64
    public var info: CheckpointInfo
    public init(name: String, sha256: String, bytes: Int64, info: CheckpointInfo) {
        self.name = name; self.sha256 = sha256; self.bytes = bytes; self.info = info
    }
}

/// What a worker reports: one JSON line each on its event channel (its standard output).
/// Events carry everything the daemon records, so it never re-reads a file to learn what happened.
/// The last event of a worker that ends normally is `finished`, `stopped` or `failed`; a worker
/// that exits without one ended abnormally.
public struct WorkerEvent: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        case started, step, evaluation, checkpointing, checkpointed, message, finished, stopped, failed
    }
    public var kind: Kind
    /// `started`: the run's total steps and the step it starts from (a resume), with preflight warnings.
    public var totalSteps: Int?
    public var startStep: Int?
    public var warnings: [String]?
    /// `step`, `evaluation`: the metric point.
    public var point: MetricPoint?
    /// `checkpointing`, `stopped`: the step.
    public var step: Int?
    /// `checkpointed`.
    public var checkpoint: CheckpointWritten?
    /// `message`: the text; `failed`: the reason.
    public var message: String?
    /// `finished`, for an evaluation or embedding: what it found.
    public var result: EvaluationResult?

    public init(kind: Kind, totalSteps: Int? = nil, startStep: Int? = nil, warnings: [String]? = nil, point: MetricPoint? = nil,
                step: Int? = nil, checkpoint: CheckpointWritten? = nil, message: String? = nil, result: EvaluationResult? = nil) {
        self.kind = kind; self.totalSteps = totalSteps; self.startStep = startStep; self.warnings = warnings; self.point = point
        self.step = step; self.checkpoint = checkpoint; self.message = message; self.result = result
    }

    /// The event for a trainer's event.
    public init(_ e: TrainingEvent) {
        switch e {
        case .started(let total, let start, let warnings): self.init(kind: .started, totalSteps: total, startStep: start, warnings: warnings)
        case .step(let p): self.init(kind: .step, point: p)
        case .evaluated(let p): self.init(kind: .evaluation, point: p)
        case .checkpointing(let step): self.init(kind: .checkpointing, step: step)
        case .checkpointed(let url, let sha, let bytes, let info):
            self.init(kind: .checkpointed, checkpoint: CheckpointWritten(name: url.lastPathComponent, sha256: sha, bytes: bytes, info: info))
        case .message(let m): self.init(kind: .message, message: m)
        }
    }

    /// The event that ends a worker's run.
    public init(_ outcome: TrainingOutcome) {
        switch outcome {
        case .finished: self.init(kind: .finished)
        case .stopped(let step): self.init(kind: .stopped, step: step)
        case .failed(let reason): self.init(kind: .failed, message: reason)
        }
    }

    /// One line of the protocol (JSON, no trailing newline).
    public func encoded() -> [UInt8] { Array((try? Self.encoder.encode(self)) ?? Data(#"{"kind":"message"}"#.utf8)) }

    public static func decode(_ line: some Collection<UInt8>) throws -> WorkerEvent {
        try JSONDecoder.worker.decode(WorkerEvent.self, from: Data(line))
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        e.dateEncodingStrategy = .iso8601
        e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return e
    }()
}

extension JSONDecoder {
    /// The protocol's decoder (dates as ISO 8601, non-finite floats as strings).
    static let worker: JSONDecoder = {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        d.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return d
    }()
}
