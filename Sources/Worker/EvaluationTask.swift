import Data
import Foundation
import MoCo
import NN

extension Worker {
    /// Runs an evaluation or embedding job's task (`task.json` in its folder) instead of training:
    /// the training job's checkpoint's query encoder, in eval mode, on un-augmented images
    /// normalized as it was trained. Progress goes out as step points (images done of all the
    /// images to encode), the finding with `finished`. A cancel stops it between batches.
    static func evaluate(_ options: Options, _ task: WorkerTask, channel: EventChannel) throws -> WorkerEvent {
        let spec = task.evaluation
        let url = URL(fileURLWithPath: task.checkpointPath)
        guard FileManager.default.fileExists(atPath: url.path) else {
            return WorkerEvent(kind: .failed, message: "checkpoint \(spec.checkpoint) is gone (the training job's retention removed it)")
        }
        guard Checkpoint.verify(url) else {
            return WorkerEvent(kind: .failed, message: "checkpoint \(spec.checkpoint) does not match its recorded SHA-256")
        }
        let file = try Checkpoint.readQueryEncoder(from: url)
        let info = try Checkpoint.info(of: file)
        let training = info.spec
        let size = training.augment.size, channels = training.model.in_channels
        func load(_ source: JobSpec.DataSource, _ name: String) throws -> ImageDataset {
            try DataSources.load(source, roots: options.dataRoots, size: size, allowAbsolute: false, channels: channels,
                                 indexCache: options.jobDirectory.appendingPathComponent("\(name)-index.json"))
        }
        let images = try load(spec.data, "data")
        let bank = spec.kind == .embedding ? nil : try load(spec.train_data ?? training.data, "train-data")
        if let bank {
            guard bank.labels != nil else { return WorkerEvent(kind: .failed, message: "train_data has no labels: \(spec.kind.rawValue) evaluation needs them") }
            guard images.labels != nil else { return WorkerEvent(kind: .failed, message: "data has no labels: \(spec.kind.rawValue) evaluation needs them") }
        }
        // The normalization the encoder was trained with (its spec's, else its training split's statistics).
        var mean = training.augment.mean, std = training.augment.std
        if mean == nil || std == nil {
            let statistics: ImageDataset
            if spec.train_data == nil, let bank { statistics = bank } else { statistics = try load(training.data, "training-data") }
            let stats = statistics.channelStatistics()
            mean = mean ?? stats.mean.map { Float($0) }
            std = std ?? stats.std.map { Float(max($0, 1e-6)) }
        }
        let encoder = try Checkpoint.queryEncoder(file, info: info)
        let dim = encoder.config.featureDimension
        let total = images.count + (bank?.count ?? 0)
        channel.send(WorkerEvent(kind: .started, totalSteps: total, startStep: 0, warnings: []))
        let t0 = Date()
        var done = 0, lastReport = Date.distantPast
        // Reports progress (at most 4 times a second) and whether to go on.
        func pass(_ ds: ImageDataset) -> [Float]? {
            let before = done
            let f = Evaluation.features(encoder, ds, mean: mean!, std: std!, precision: spec.precision) { n in
                done = before + n
                if Date().timeIntervalSince(lastReport) >= 0.25 || done == total {
                    lastReport = Date()
                    let seconds = Date().timeIntervalSince(t0)
                    let rate = Double(done) / max(seconds, 1e-9)
                    channel.send(WorkerEvent(kind: .step, point: MetricPoint.progress(step: done, total: total, imagesPerSecond: rate,
                                                                                    eta: Double(total - done) / max(rate, 1e-9), time: seconds)))
                }
                return stopFlag.load(ordering: .relaxed) == 0 && !channel.broken
            }
            return stopFlag.load(ordering: .relaxed) == 0 ? f : nil
        }
        var result = EvaluationResult(kind: spec.kind, checkpoint: spec.checkpoint, images: images.count, precision: spec.precision, seconds: 0)
        switch spec.kind {
        case .embedding:
            guard let features = pass(images) else { return WorkerEvent(kind: .stopped, step: done) }
            let out = options.jobDirectory.appendingPathComponent("embeddings.npy")
            let data = Readers.encodeNPY(features, shape: [images.count, dim])
            try SafeTensorsFile.writeDurably(data, to: out)
            result.artifact = out.lastPathComponent
            result.shape = [images.count, dim]
            result.bytes = Int64(data.count)
            result.sha256 = SHA256.hex(data)
        case .knn, .linear:
            let bank = bank!
            guard var bankFeatures = pass(bank), var queries = pass(images) else { return WorkerEvent(kind: .stopped, step: done) }
            result.train_images = bank.count
            if spec.kind == .knn {
                Evaluation.normalizeRows(&bankFeatures, dim: dim)
                Evaluation.normalizeRows(&queries, dim: dim)
                let classes = max(bank.labels!.max() ?? 0, images.labels!.max() ?? 0) + 1
                let k = spec.k ?? 200, t = spec.t ?? 0.1
                result.top1 = Evaluation.knnTop1(bank: bankFeatures, bankLabels: bank.labels!, queries: queries, queryLabels: images.labels!,
                                                 dim: dim, k: k, t: t, classes: classes)
                result.k = k
                result.t = t
            } else {
                channel.send(WorkerEvent(kind: .message, message: "training the linear classifier for \(spec.epochs) epochs"))
                let r = Evaluation.linear(trainFeatures: bankFeatures, trainLabels: bank.labels!, evalFeatures: queries, evalLabels: images.labels!,
                                          dim: dim, epochs: spec.epochs)
                result.top1 = r.top1
                result.top5 = r.top5
                result.epochs = spec.epochs
            }
        }
        result.seconds = Date().timeIntervalSince(t0)
        channel.send(WorkerEvent(kind: .message, message: result.summary))
        return WorkerEvent(kind: .finished, result: result)
    }
}
