import Autograd
import Collectives
import Data
import Foundation
import Kernels
import NN

/// One line of the metrics stream (`metrics.jsonl`): a training step or an evaluation.
public struct MetricPoint: Sendable, Codable, Equatable {
    /// A training step, or an evaluation.
    public enum Kind: String, Sendable, Codable { case step, eval }
    public var kind: Kind
    /// Optimizer steps done (1-based after the first step).
    public var step: Int
    /// Epoch in progress, 1-based.
    public var epoch: Int
    public var total_steps: Int
    public var loss: Double?
    public var lr: Double?
    public var images_per_second: Double?
    /// Share of the step spent waiting for the data workers.
    public var data_wait_share: Double?
    /// How often the positive key ranks first among the K+1 candidates.
    public var instance_accuracy: Double?
    /// Std of L2-normalized query features across the batch (≈ 1/sqrt(dim) healthy, → 0 collapsed).
    public var feature_std: Double?
    /// ln(K+1): the loss of a model that cannot tell keys apart (where training starts).
    public var loss_at_chance: Double?
    public var eta_seconds: Double?
    /// kNN top-1 on the evaluation split, in percent.
    public var knn_top1: Double?
    public var time: Double
    /// The precision the step or evaluation computed in (`fp32`, `bf16`).
    public var precision: Precision?
    /// A distributed step's all-reduce of gradients and batch-norm statistics: bytes per rank,
    /// and the seconds it took on rank 0 (nil on one process).
    public var allreduce_bytes: Int? = nil
    public var allreduce_seconds: Double? = nil
    /// A streamed dataset's unusable images so far (skipped and counted; all ranks together).
    public var data_errors: Int? = nil
}

extension MetricPoint {
    /// An evaluation or embedding job's progress as a step point: `step` images encoded of `total`.
    public static func progress(step: Int, total: Int, imagesPerSecond: Double, eta: Double, time: Double) -> MetricPoint {
        MetricPoint(kind: .step, step: step, epoch: 1, total_steps: total, loss: nil, lr: nil, images_per_second: imagesPerSecond,
                    data_wait_share: nil, instance_accuracy: nil, feature_std: nil, loss_at_chance: nil, eta_seconds: eta, knn_top1: nil,
                    time: time, precision: nil)
    }
}

/// What the trainer reports while it runs.
public enum TrainingEvent: Sendable {
    case started(totalSteps: Int, startStep: Int, warnings: [String])
    case step(MetricPoint)
    case evaluated(MetricPoint)
    /// About to write a checkpoint at `step`: whatever the listener keeps about the steps so far
    /// should be made durable now (a crash after the write resumes from it).
    case checkpointing(step: Int)
    /// A checkpoint was written (durably, its digest beside it): everything a listener needs to
    /// record it, so nobody re-reads its header.
    case checkpointed(URL, sha256: String, bytes: Int64, info: CheckpointInfo)
    case message(String)
}

public enum TrainingOutcome: Sendable, Equatable {
    case finished
    /// Stopped on request after `step` steps, with a checkpoint there.
    case stopped(step: Int)
    /// Stopped by a fault (e.g. a non-finite loss); the last good checkpoint is kept.
    case failed(reason: String)
}

/// Runs a MoCo job: data, model, optimizer, metrics, evaluation and checkpoints, on the
/// calling thread (which becomes the compute thread).
public final class Trainer {
    public let spec: JobSpec
    public let train: ImageDataset
    public let eval: ImageDataset?
    public let outDirectory: URL
    public let workers: Int
    public let mean: [Float]
    public let std: [Float]
    public let store: CheckpointStore
    let emit: (TrainingEvent) -> Void

    /// The ranks training together when the spec's `distributed.processes` is above 1 (nil: alone).
    public let group: Communicator?

    /// `group`: the world communicator of the job's ranks (`mpiexec -n N`); rank 0 writes the
    /// metrics, checkpoints and evaluations, the others only train.
    public init(spec: JobSpec, train: ImageDataset, eval: ImageDataset?, outDirectory: URL, workers: Int = 1,
                group: Communicator? = nil, events: @escaping (TrainingEvent) -> Void = { _ in }) {
        self.spec = spec
        self.group = group
        self.train = train
        self.eval = eval
        self.outDirectory = outDirectory
        self.workers = workers
        self.emit = events
        // Computed only when the spec leaves them out (a streamed dataset decodes up to 1,000 images for them).
        let stats = spec.augment.mean == nil || spec.augment.std == nil ? train.channelStatistics() : nil
        mean = spec.augment.mean ?? stats?.mean.map { Float($0) } ?? []
        std = spec.augment.std ?? stats?.std.map { Float(max($0, 1e-6)) } ?? []
        store = CheckpointStore(directory: outDirectory.appendingPathComponent("checkpoints"),
                                keepLast: spec.checkpoint.keep_last, keepBest: spec.checkpoint.keep_best)
    }

    public var augmentConfig: AugmentConfig {
        AugmentConfig(preset: spec.augment.preset, size: spec.augment.size, mean: mean, std: std)
    }

    /// Whether this process writes metrics, checkpoints and evaluations (alone, or rank 0).
    public var isWriter: Bool { (group?.rank ?? 0) == 0 }

    /// Builds the method and optimizer exactly as a fresh run does (seeded by the spec).
    public func makeModel() -> (any TrainingMethod, any Optimizer) {
        var rng = SeededGenerator(seed: StreamSeed.mix(spec.seed, 1))
        let method = Methods.make(spec, rng: &rng)
        return (method, Methods.makeOptimizer(spec, for: method))
    }

    /// Trains until the last epoch, a stop request (checked between steps), `stopAfterSteps`
    /// total steps, or a fault. `resume` continues from a checkpoint exactly where it stood.
    public func run(resume: URL? = nil, stopAfterSteps: Int? = nil, shouldStop: () -> Bool = { false }) throws -> TrainingOutcome {
        let checkpoint = try resume.map { ResumePoint(name: $0.lastPathComponent, file: try SafeTensorsFile.read(from: $0)) }
        return try run(resuming: checkpoint, stopAfterSteps: stopAfterSteps, shouldStop: shouldStop)
    }

    /// A checkpoint to continue from, already read (a distributed worker's rank 0 reads it and
    /// hands it to the other ranks, which need not see the job's directory).
    public struct ResumePoint {
        public var name: String
        public var file: SafeTensorsFile
        public init(name: String, file: SafeTensorsFile) { self.name = name; self.file = file }
    }

    /// `run(resume:)` from a checkpoint already read.
    public func run(resuming resume: ResumePoint?, stopAfterSteps: Int? = nil, shouldStop: () -> Bool = { false }) throws -> TrainingOutcome {
        Runtime.setThreads(spec.threads)
        let preflight = try Preflight.check(spec, train: train, eval: eval)
        let processes = spec.distributed.processes
        let ranks: Communicator? = processes > 1 ? group : nil
        if processes > 1 && group?.size != processes {
            throw SpecError([FieldIssue("distributed.processes", "is \(processes) but \(group?.size ?? 1) process(es) run this job: start it with mpiexec -n \(processes)")])
        }
        var shard: BatchShard?
        if let ranks {
            // The spec's validation makes the batch split; a batch that does not is refused, never trained whole.
            guard let s = BatchShard(rank: ranks.rank, ranks: ranks.size, globalBatch: spec.optim.batch_size) else {
                throw SpecError([FieldIssue("distributed.processes", "must divide optim.batch_size (\(spec.optim.batch_size))")])
            }
            shard = s
            // No collective waits forever for a rank that hangs.
            ranks.limitWaiting(seconds: Double(spec.distributed.timeout_s))
        }
        defer { ranks?.stopWatching() }
        if isWriter {
            try FileManager.default.createDirectory(at: store.directory, withIntermediateDirectories: true)
            store.removeLeftovers()
        }
        let (model, opt) = makeModel()
        var shuffleRNG = SeededGenerator(seed: StreamSeed.mix(spec.seed, 2))
        var step = 0
        var bestKNN: Double?
        var resumedEvalDue = false
        if let resume {
            let info = try Checkpoint.restore(resume.file, model: model, optimizer: opt, rng: &shuffleRNG)
            step = info.step
            bestKNN = info.knnTop1
            resumedEvalDue = info.evalDue
            emit(.message("resumed from \(resume.name) at step \(step)" + (info.evalDue ? " (its epoch's evaluation is still due)" : "")))
        }
        let loader = BatchLoader(dataset: train, augment: augmentConfig, batchSize: spec.optim.batch_size, views: 2,
                                 seed: spec.seed, workers: workers, shard: shard?.range)
        let perEpoch = loader.batchesPerEpoch
        let total = perEpoch * spec.optim.epochs
        emit(.started(totalSteps: total, startStep: step, warnings: preflight.warnings))
        // An evaluation still due at the checkpoint's step is run again below: drop any point of
        // it a crash left behind, so it appears exactly once.
        let metrics = isWriter ? try MetricsWriter(url: outDirectory.appendingPathComponent("metrics.jsonl"), truncateAfterStep: step,
                                                   dropEvaluationAtStep: resumedEvalDue) : nil
        let base = spec.effectiveLearningRate
        let schedule = spec.schedule
        let size = spec.augment.size, channels = train.channels, batch = spec.optim.batch_size, local = loader.localBatchSize
        let chance = model.lossAtChance(batch: batch)
        let started = Date()
        let firstStep = step
        var lastCheckpointStep = -1
        var lastCheckpointEvalDue = false

        /// Whether an evaluation is scheduled once `done` epochs are complete.
        func evaluationScheduled(after done: Int) -> Bool {
            guard eval != nil, let e = spec.eval, done >= 1 else { return false }
            return done % e.every_epochs == 0 || done == spec.optim.epochs
        }

        func checkpoint(epoch: Int, knn: Double?, evalDue: Bool) throws {
            guard isWriter else { lastCheckpointStep = step; lastCheckpointEvalDue = evalDue; return }
            emit(.checkpointing(step: step))
            let info = CheckpointInfo(step: step, epoch: epoch, knnTop1: knn, spec: spec, created: Date(), evalDue: evalDue)
            let url = store.directory.appendingPathComponent(Checkpoint.fileName(epoch: epoch, step: step))
            let file = Checkpoint.encode(model: model, optimizer: opt, info: info, rng: shuffleRNG)
            let digest = try Checkpoint.write(file, to: url)
            let bytes = ((try? FileManager.default.attributesOfItem(atPath: url.path))?[.size] as? NSNumber)?.int64Value ?? 0
            store.prune()
            lastCheckpointStep = step
            lastCheckpointEvalDue = evalDue
            emit(.checkpointed(url, sha256: digest, bytes: bytes, info: info))
        }

        /// A checkpoint between steps (every N steps, or a stop): on an epoch's last step it
        /// records whether that epoch's evaluation is still to run.
        func checkpointMidEpoch() throws {
            let due = perEpoch > 0 && step % perEpoch == 0 && evaluationScheduled(after: step / perEpoch)
            try checkpoint(epoch: step / perEpoch, knn: nil, evalDue: due)
        }

        /// The work after `done` epochs: the scheduled evaluation, then the epoch's checkpoint
        /// (also when a checkpoint at this step was written before the evaluation ran).
        func endOfEpoch(_ done: Int) throws {
            var knn: Double?
            if isWriter, let eval, let e = spec.eval, evaluationScheduled(after: done) {
                let t0 = Date()
                let top1 = Evaluation.knn(model.encoder, train: train, eval: eval, mean: mean, std: std, k: e.knn_k, t: e.knn_t,
                                          precision: spec.precision)
                knn = top1
                bestKNN = max(bestKNN ?? -1, top1)
                let point = MetricPoint(kind: .eval, step: step, epoch: done, total_steps: total, knn_top1: top1,
                                        time: Date().timeIntervalSince1970, precision: spec.precision)
                try metrics?.append(point)
                emit(.evaluated(point))
                emit(.message(String(format: "epoch %d: kNN top-1 %.2f%% (%.1f s)", done, top1, Date().timeIntervalSince(t0))))
            }
            let due = (spec.checkpoint.every_epochs.map { done % $0 == 0 } ?? false) || done == spec.optim.epochs
            let stale = lastCheckpointStep == step && lastCheckpointEvalDue
            if (due && lastCheckpointStep != step) || stale { try checkpoint(epoch: done, knn: knn, evalDue: false) }
        }

        if resumedEvalDue && perEpoch > 0 && step % perEpoch == 0 {
            // The stop came after the epoch's last step but before its evaluation: run it now.
            lastCheckpointStep = step
            lastCheckpointEvalDue = true
            try endOfEpoch(step / perEpoch)
        }

        var epoch = step / max(perEpoch, 1)
        var dataErrors = DataErrorTally()
        while epoch < spec.optim.epochs {
            let stream = loader.epoch(epoch, startingAt: step - epoch * perEpoch)
            var lastWait = 0.0
            var tick = Date()
            while let b = stream.next() {
                let inBatch = step - epoch * perEpoch
                let lr = schedule.rate(base: base, epoch: epoch, step: inBatch, stepsPerEpoch: perEpoch)
                opt.learningRate = lr
                let x1 = Tensor(shape: [local, channels, size, size], buffer: b.views[0])
                let x2 = Tensor(shape: [local, channels, size, size], buffer: b.views[1])
                let loss: Float, accuracy: Float, featureStd: Float
                var allReduce: AllReduceStats?
                let progress = Double(step) / Double(max(total, 1))
                let r = try ranks.map { try model.trainStep(x1, x2, optimizer: opt, progress: progress, rng: &shuffleRNG, group: $0) }
                    ?? model.trainStep(x1, x2, optimizer: opt, progress: progress, rng: &shuffleRNG)
                (loss, accuracy, featureStd) = (r.loss, r.instanceAccuracy, r.featureStd)
                allReduce = r.allReduce
                guard loss.isFinite else {
                    let reason = "loss became \(loss) at step \(step + 1) (epoch \(epoch + 1)); stopped, keeping the last good checkpoint"
                    emit(.message(reason))
                    return .failed(reason: reason)
                }
                step += 1
                // A streamed dataset's unusable images, each counted and named in the log once
                // whichever ranks found it, and the images tried, summed over the ranks. Problems
                // found while indexing are in every rank's stream: rank 0's stand for all.
                var found = train.stream?.takeNewErrors() ?? []
                var tried = train.stream?.errorCounts.tried ?? 0
                if !isWriter, let problems = train.stream?.index.problems.count {
                    tried -= problems
                    found.removeAll { $0.sample == nil }
                }
                var dataCounts = [Float(tried), Float(found.count)]
                if let ranks, train.stream != nil {
                    try ranks.allReduceSum(&dataCounts)
                    if dataCounts[1] > 0 {
                        found = try ranks.allGatherBytes(Array(try JSONEncoder().encode(found)))
                            .flatMap { try JSONDecoder().decode([DataErrorReport].self, from: Data($0)) }
                    }
                }
                for report in dataErrors.add(found) where isWriter { emit(.message("skipped an unusable image: \(report.message)")) }

                let now = Date()
                let seconds = now.timeIntervalSince(tick)
                tick = now
                let wait = stream.waitSeconds - lastWait
                lastWait = stream.waitSeconds
                let elapsed = now.timeIntervalSince(started)
                let rate = Double(step - firstStep) / max(elapsed, 1e-9)
                let point = MetricPoint(kind: .step, step: step, epoch: epoch + 1, total_steps: total, loss: Double(loss), lr: Double(lr),
                                        images_per_second: Double(batch) / max(seconds, 1e-9), data_wait_share: min(1, wait / max(seconds, 1e-9)),
                                        instance_accuracy: Double(accuracy), feature_std: Double(featureStd),
                                        loss_at_chance: chance, eta_seconds: Double(total - step) / max(rate, 1e-9), knn_top1: nil,
                                        time: now.timeIntervalSince1970, precision: spec.precision,
                                        allreduce_bytes: allReduce?.bytes, allreduce_seconds: allReduce?.seconds,
                                        data_errors: train.stream == nil ? nil : dataErrors.count)
                try metrics?.append(point)
                emit(.step(point))
                if let reason = DataErrorLimit(rate: spec.data.errorRateLimit).exceeded(bad: dataErrors.count, tried: Int(dataCounts[0]),
                                                                                      count: train.count) {
                    emit(.message(reason))
                    return .failed(reason: reason)
                }
                if let every = spec.checkpoint.every_steps, step % every == 0 { try checkpointMidEpoch() }
                // A stop request reaches the ranks at different moments: they stop together when any
                // has one. (Read after the checkpoint, so a stop that came during it takes no extra step.)
                var stop = [Float(shouldStop() ? 1 : 0)]
                if let ranks { try ranks.allReduceSum(&stop) }
                if stop[0] > 0 || stopAfterSteps.map({ step >= $0 }) == true {
                    if lastCheckpointStep != step { try checkpointMidEpoch() }
                    return .stopped(step: step)
                }
            }
            epoch += 1
            try endOfEpoch(epoch)
        }
        return .finished
    }
}

/// Appends metric points as JSON lines; on resume, drops lines past the checkpoint's step so
/// the file reads as one continuous run.
final class MetricsWriter {
    let handle: FileHandle
    let encoder = JSONEncoder()

    /// `dropEvaluationAtStep`: also drop the evaluation point at `step` (it is due to run again).
    init(url: URL, truncateAfterStep step: Int, dropEvaluationAtStep: Bool = false) throws {
        let fm = FileManager.default
        var kept = Data()
        if fm.fileExists(atPath: url.path), let old = try? String(contentsOf: url, encoding: .utf8) {
            for line in old.split(separator: "\n") {
                if let p = try? JSONDecoder().decode(MetricPoint.self, from: Data(line.utf8)), p.step <= step,
                   !(p.kind == .step && step == 0), !(dropEvaluationAtStep && p.kind == .eval && p.step == step) {
                    kept.append(Data((line + "\n").utf8))
                }
            }
        }
        try kept.write(to: url)
        handle = try FileHandle(forWritingTo: url)
        try handle.seekToEnd()
        encoder.outputFormatting = [.sortedKeys]
    }

    func append(_ p: MetricPoint) throws {
        var d = try encoder.encode(p)
        d.append(0x0A)
        try handle.write(contentsOf: d)
    }

    deinit { try? handle.close() }
}

/// A streamed dataset's unusable images as a job counts them: each sample once, however many
/// ranks (or substitutions) came upon it, and each problem found while indexing.
public struct DataErrorTally: Sendable, Equatable {
    public private(set) var samples: Set<Int> = []
    public private(set) var indexProblems = 0
    public init() {}

    public var count: Int { samples.count + indexProblems }

    /// Adds `found`, returning the reports not counted before (to be logged), in order.
    public mutating func add(_ found: [DataErrorReport]) -> [DataErrorReport] {
        found.filter { report in
            guard let sample = report.sample else { indexProblems += 1; return true }
            return samples.insert(sample).inserted
        }
    }
}

/// When a streamed dataset's unusable images fail the job (`data.max_error_rate`), as a pure
/// function: their share of the images tried, judged once 100 have been tried (or half of a
/// smaller dataset), must not exceed the limit.
public struct DataErrorLimit: Sendable, Equatable {
    public var rate: Double
    public init(rate: Double) { self.rate = rate }

    /// The failure reason, or nil while within the limit.
    public func exceeded(bad: Int, tried: Int, count: Int) -> String? {
        guard bad > 0, tried >= min(100, max(1, count / 2)) else { return nil }
        let share = Double(bad) / Double(max(tried, 1))
        guard share > rate else { return nil }
        return String(format: "%d of %d images tried could not be used (%.1f%%), more than data.max_error_rate (%.1f%%); the job's log names them",
                      bad, tried, 100 * share, 100 * rate)
    }
}
