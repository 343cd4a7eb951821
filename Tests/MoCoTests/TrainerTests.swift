import Autograd
import Data
import Foundation
import Kernels
@testable import MoCo
import NN
import TestSupport
import Testing

/// Tiny synthetic data: 3 classes of 8x8 gray images (a bright row band per class) under noise.
func syntheticDataset(_ n: Int, seed: UInt64) -> ImageDataset {
    var rng = SeededGenerator(seed: seed)
    var pixels: [UInt8] = [], labels: [Int] = []
    for _ in 0..<n {
        let c = Int(rng.next() % 3)
        labels.append(c)
        for y in 0..<8 {
            for _ in 0..<8 {
                let base = (y / 3 == c) ? 200.0 : 40.0
                pixels.append(UInt8(max(0, min(255, base + rng.nextGaussian() * 30))))
            }
        }
    }
    return ImageDataset(count: n, height: 8, width: 8, channels: 1, pixels: pixels, labels: labels)
}

func tinySpec(epochs: Int = 2, everySteps: Int? = nil, lr: Float = 0.05, threads: Int = 1, precision: Precision = .fp32) -> JobSpec {
    let json = """
    {"name": "tiny", "data": {"format": "npy", "path": "unused"},
     "eval": {"format": "npy", "path": "unused", "knn_k": 10, "knn_t": 0.1},
     "model": {"arch": "resnet18", "stem": "cifar", "width": 4, "in_channels": 1, "dim": 8, "mlp_hidden": 16},
     "moco": {"queue": 32, "momentum": 0.9, "temperature": 0.2, "bn_splits": 2},
     "augment": {"preset": "v2", "size": 8},
     "optim": {"batch_size": 16, "epochs": \(epochs), "lr": \(lr), "lr_scaling": "none", "schedule": "cosine"},
     "checkpoint": {"every_epochs": 1, "every_steps": \(everySteps.map(String.init) ?? "null"), "keep_last": 100, "keep_best": 1},
     "seed": 3, "threads": \(threads), "precision": "\(precision.rawValue)"}
    """
    return try! JobSpec.parse(Data(json.utf8))
}

func temporaryDirectory() -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("moco-\(UUID())")
    try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

func losses(_ dir: URL) -> [Double] {
    let text = (try? String(contentsOf: dir.appendingPathComponent("metrics.jsonl"), encoding: .utf8)) ?? ""
    return text.split(separator: "\n").compactMap { try? JSONDecoder().decode(MetricPoint.self, from: Data($0.utf8)) }
        .filter { $0.kind == .step }.compactMap(\.loss)
}

@Suite(.serialized) struct TrainerTests {
    let train = syntheticDataset(64, seed: 1)
    let eval = syntheticDataset(30, seed: 2)

    @Test func trainsWritesMetricsCheckpointsAndEvaluates() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        var events: [String] = []
        let trainer = Trainer(spec: tinySpec(), train: train, eval: eval, outDirectory: dir, workers: 1) { e in
            if case .evaluated(let p) = e { events.append("eval \(p.knn_top1!)") }
        }
        #expect(try trainer.run() == .finished)
        let points = try String(contentsOf: dir.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
            .map { try JSONDecoder().decode(MetricPoint.self, from: Data($0.utf8)) }
        #expect(points.filter { $0.kind == .step }.count == 8)   // 2 epochs x 64/16
        #expect(points.filter { $0.kind == .eval }.count == 2 && events.count == 2)
        let first = points[0]
        #expect(first.loss_at_chance! == log(33.0) && first.lr! == Double(Float(0.05)) && first.step == 1 && first.epoch == 1)
        let entries = trainer.store.list()
        #expect(entries.map(\.step) == [4, 8])
        #expect(entries.allSatisfy { Checkpoint.verify($0.url) })
        #expect(entries.last?.knnTop1 != nil)
    }

    /// Run 2N steps straight, or N steps, stop, resume from the checkpoint and run N more:
    /// single-threaded with a fixed seed, the losses and the final parameters are identical.
    @Test func resumeIsExact() throws {
        let a = temporaryDirectory(), b = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: a); try? FileManager.default.removeItem(at: b) }
        let spec = tinySpec(epochs: 2, everySteps: 3)
        #expect(try Trainer(spec: spec, train: train, eval: nil, outDirectory: a, workers: 2).run(stopAfterSteps: 6) == .stopped(step: 6))
        #expect(try Trainer(spec: spec, train: train, eval: nil, outDirectory: b, workers: 0).run(stopAfterSteps: 3) == .stopped(step: 3))
        let t2 = Trainer(spec: spec, train: train, eval: nil, outDirectory: b, workers: 1)
        let resumeFrom = try #require(t2.store.list().first { $0.step == 3 })
        #expect(try t2.run(resume: resumeFrom.url, stopAfterSteps: 6) == .stopped(step: 6))
        #expect(losses(a) == losses(b) && losses(a).count == 6)
        let fa = try SafeTensorsFile.read(from: Trainer(spec: spec, train: train, eval: nil, outDirectory: a).store.list().last!.url)
        let fb = try SafeTensorsFile.read(from: t2.store.list().last!.url)
        #expect(fa.tensors.map(\.name) == fb.tensors.map(\.name))
        for (x, y) in zip(fa.tensors, fb.tensors) { #expect(x.tensor == y.tensor, "\(x.name) differs after resume") }
    }

    /// A stop on the last step of each epoch (a pause or SIGTERM landing there) checkpoints
    /// before the epoch's kNN evaluation; the resume runs it first. A 3-epoch job stopped at
    /// every boundary has exactly 3 evaluation points, the same kNN figures as a straight run,
    /// and a final checkpoint that no longer says an evaluation is due. (Regression: 0 points.)
    @Test func evaluationsSurviveStopsAtEpochBoundaries() throws {
        let straight = temporaryDirectory(), stopped = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: straight); try? FileManager.default.removeItem(at: stopped) }
        let spec = tinySpec(epochs: 3)
        #expect(try Trainer(spec: spec, train: train, eval: eval, outDirectory: straight).run() == .finished)
        var resume: URL?
        for boundary in [4, 8] {
            let t = Trainer(spec: spec, train: train, eval: eval, outDirectory: stopped)
            #expect(try t.run(resume: resume, stopAfterSteps: boundary) == .stopped(step: boundary))
            let last = try #require(t.store.list().last)
            #expect(last.step == boundary)
            let info = try Checkpoint.info(of: SafeTensorsFile.read(from: last.url))
            #expect(info.evalDue, "the checkpoint at step \(boundary) should record the evaluation as due")
            resume = last.url
        }
        let final = Trainer(spec: spec, train: train, eval: eval, outDirectory: stopped)
        #expect(try final.run(resume: resume) == .finished)
        func evals(_ dir: URL) throws -> [MetricPoint] {
            try String(contentsOf: dir.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
                .map { try JSONDecoder().decode(MetricPoint.self, from: Data($0.utf8)) }.filter { $0.kind == .eval }
        }
        let a = try evals(straight), b = try evals(stopped)
        #expect(b.map(\.epoch) == [1, 2, 3] && b.map(\.step) == [4, 8, 12])
        #expect(a.map(\.knn_top1) == b.map(\.knn_top1))
        for e in final.store.list() {
            #expect(try !Checkpoint.info(of: SafeTensorsFile.read(from: e.url)).evalDue, "\(e.url.lastPathComponent) still has an evaluation due")
        }
        #expect(final.store.list().last?.knnTop1 != nil)
    }

    /// A crash after the resumed evaluation was written but before the checkpoint was rewritten:
    /// the next resume runs it again and the metrics still hold it once.
    @Test func evaluationIsNotDuplicatedByASecondResume() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let spec = tinySpec(epochs: 2)
        let t = Trainer(spec: spec, train: train, eval: eval, outDirectory: dir)
        #expect(try t.run(stopAfterSteps: 4) == .stopped(step: 4))
        let ckpt = try #require(t.store.list().last).url
        let saved = try Data(contentsOf: ckpt), digest = try Data(contentsOf: ckpt.appendingPathExtension("sha256"))
        // Resume (the evaluation runs, the checkpoint is rewritten) and stop one step later, then
        // put the old checkpoint back, as if the rewrite never happened, while metrics.jsonl keeps
        // the evaluation line.
        #expect(try Trainer(spec: spec, train: train, eval: eval, outDirectory: dir).run(resume: ckpt, stopAfterSteps: 5) == .stopped(step: 5))
        #expect(try !Checkpoint.info(of: SafeTensorsFile.read(from: ckpt)).evalDue)
        try saved.write(to: ckpt)
        try digest.write(to: ckpt.appendingPathExtension("sha256"))
        #expect(try Trainer(spec: spec, train: train, eval: eval, outDirectory: dir).run(resume: ckpt) == .finished)
        let points = try String(contentsOf: dir.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
            .map { try JSONDecoder().decode(MetricPoint.self, from: Data($0.utf8)) }
        #expect(points.filter { $0.kind == .eval }.map(\.step) == [4, 8])
        #expect(points.filter { $0.kind == .step }.map(\.step) == Array(1...8))
    }

    @Test func checkpointRoundTrip() throws {
        let spec = tinySpec()
        let trainer = Trainer(spec: spec, train: train, eval: nil, outDirectory: temporaryDirectory())
        let (modelMethod, opt) = trainer.makeModel()
        let model = try #require(modelMethod as? MoCoModel)
        model.queuePointer = 16
        opt.loadMomentumBuffers(model.encoderQ.parameters().map { Tensor.full($0.shape, 0.5) })
        let rng = SeededGenerator(seed: 99)
        let info = CheckpointInfo(step: 7, epoch: 1, knnTop1: 55.5, spec: spec, created: Date(timeIntervalSince1970: 1000))
        let file = Checkpoint.encode(model: model, optimizer: opt, info: info, rng: rng)
        let url = trainer.outDirectory.appendingPathComponent("c.safetensors")
        let digest = try Checkpoint.write(file, to: url)
        #expect(Checkpoint.recordedDigest(of: url) == digest && Checkpoint.verify(url))
        let (model2Method, opt2) = Trainer(spec: tinySpec(), train: train, eval: nil, outDirectory: trainer.outDirectory).makeModel()
        let model2 = try #require(model2Method as? MoCoModel)
        var rng2 = SeededGenerator(seed: 1)
        let back = try Checkpoint.restore(SafeTensorsFile.read(from: url), model: model2, optimizer: opt2, rng: &rng2)
        #expect(back.step == 7 && back.epoch == 1 && back.knnTop1 == 55.5 && back.spec == spec)
        #expect(rng2 == rng && model2.queuePointer == 16)
        #expect(model2.encoderK.stateDict().map(\.tensor) == model.encoderK.stateDict().map(\.tensor))
        #expect(opt2.momentumBuffers.map { $0?.toArray() } == opt.momentumBuffers.map { $0?.toArray() })
        // A flipped byte fails verification.
        var bytes = try Data(contentsOf: url)
        bytes[bytes.count - 1] ^= 0xff
        try bytes.write(to: url)
        #expect(!Checkpoint.verify(url))
    }

    @Test func retentionKeepsLastAndBest() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let spec = tinySpec()
        let trainer = Trainer(spec: spec, train: train, eval: nil, outDirectory: dir)
        let (modelMethod, opt) = trainer.makeModel()
        let model = try #require(modelMethod as? MoCoModel)
        let store = CheckpointStore(directory: dir, keepLast: 2, keepBest: 1)
        for (step, knn) in [(1, 50.0), (2, 80.0), (3, 60.0), (4, 70.0), (5, 65.0)] {
            let info = CheckpointInfo(step: step, epoch: step, knnTop1: knn, spec: spec, created: Date())
            try Checkpoint.write(Checkpoint.encode(model: model, optimizer: opt, info: info, rng: SeededGenerator(seed: 0)),
                                 to: dir.appendingPathComponent(Checkpoint.fileName(epoch: step, step: step)))
            store.prune()
        }
        #expect(store.list().map(\.step) == [2, 4, 5])   // best (80) plus the last two
        // A corrupt newest checkpoint is skipped for the one before.
        let newest = store.list().last!.url
        try Data("garbage".utf8).write(to: newest)
        #expect(store.latestValid()?.step == 4)
    }

    @Test func nonFiniteLossStopsAndKeepsLastGoodCheckpoint() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let trainer = Trainer(spec: tinySpec(everySteps: 1, lr: 1e30), train: train, eval: nil, outDirectory: dir)
        let outcome = try trainer.run()
        guard case .failed(let reason) = outcome else { Issue.record("expected a failure, got \(outcome)"); return }
        #expect(reason.contains("loss became"))
        let steps = losses(dir)
        #expect(!steps.isEmpty && steps.allSatisfy { $0.isFinite })
        // Every checkpoint on disk is one written after a finite loss, the newest at the last good step.
        #expect(trainer.store.list().last?.step == steps.count)
    }

    /// A bf16 job trains, evaluates and checkpoints like an fp32 one; every metrics line says
    /// which precision ran; a resume continues it exactly (bf16 rounding is deterministic).
    @Test func bf16RunTrainsReportsItsPrecisionAndResumesExactly() throws {
        guard Runtime.bf16.onednn_bf16 else { return }   // refused at preflight elsewhere (SpecTests)
        let dir = temporaryDirectory(), resumed = temporaryDirectory(), fp32Dir = temporaryDirectory()
        defer { for d in [dir, resumed, fp32Dir] { try? FileManager.default.removeItem(at: d) } }
        let spec = tinySpec(epochs: 2, precision: .bf16)
        let outcome = try Trainer(spec: spec, train: train, eval: eval, outDirectory: dir).run()
        guard case .finished = outcome else { Issue.record("bf16 run: \(outcome)"); return }
        let text = try String(contentsOf: dir.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        let points = text.split(separator: "\n").compactMap { try? JSONDecoder().decode(MetricPoint.self, from: Data($0.utf8)) }
        #expect(!points.isEmpty && points.allSatisfy { $0.precision == .bf16 })
        #expect(points.contains { $0.kind == .eval && $0.knn_top1 != nil })
        let full = losses(dir)
        #expect(full.allSatisfy { $0.isFinite })
        // Not an fp32 run under another name: the losses differ from fp32's in bf16's digits.
        _ = try Trainer(spec: tinySpec(epochs: 2), train: train, eval: eval, outDirectory: fp32Dir).run()
        let reference = losses(fp32Dir)
        #expect(full != reference && zip(full, reference).allSatisfy { abs($0 - $1) < 0.05 * abs($1) }, "\(full) vs \(reference)")
        // Stop after 3 steps, resume from that checkpoint: the same losses as the straight run.
        let first = Trainer(spec: tinySpec(epochs: 2, everySteps: 1, precision: .bf16), train: train, eval: eval, outDirectory: resumed)
        _ = try first.run(stopAfterSteps: 3)
        let checkpoint = try #require(first.store.latestValid())
        _ = try Trainer(spec: tinySpec(epochs: 2, everySteps: 1, precision: .bf16), train: train, eval: eval, outDirectory: resumed)
            .run(resume: checkpoint.url)
        #expect(losses(resumed) == full)
    }

    @Test func nonFiniteLossInBF16StopsWithAReason() throws {
        guard Runtime.bf16.onednn_bf16 else { return }
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let trainer = Trainer(spec: tinySpec(everySteps: 1, lr: 1e30, precision: .bf16), train: train, eval: nil, outDirectory: dir)
        guard case .failed(let reason) = try trainer.run() else { Issue.record("expected a failure"); return }
        #expect(reason.contains("loss became"))
        #expect(losses(dir).allSatisfy { $0.isFinite })
    }

    /// The query encoder alone, from the checkpoint's `encoder_q.*` tensors only, equals the
    /// whole model's query encoder after a restore, and gives the same features.
    @Test func queryEncoderAloneMatchesTheRestoredModel() throws {
        let spec = tinySpec()
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let trainer = Trainer(spec: spec, train: train, eval: nil, outDirectory: dir)
        let (modelMethod, opt) = trainer.makeModel()
        let model = try #require(modelMethod as? MoCoModel)
        var rng = SeededGenerator(seed: 12)
        for p in model.encoderQ.parameters() { p.assign(Tensor.randn(p.shape, using: &rng)) }
        opt.loadMomentumBuffers(model.encoderQ.parameters().map { Tensor.full($0.shape, 0.5) })
        let url = dir.appendingPathComponent("c.safetensors")
        let info = CheckpointInfo(step: 3, epoch: 1, knnTop1: nil, spec: spec, created: Date(timeIntervalSince1970: 0))
        try Checkpoint.write(Checkpoint.encode(model: model, optimizer: opt, info: info, rng: rng), to: url)

        let file = try Checkpoint.readQueryEncoder(from: url)
        #expect(file.tensors.allSatisfy { $0.name.hasPrefix("encoder_q.") || $0.name == "step" || $0.name == "epoch" })
        #expect(file.tensors.count == model.encoderQ.stateDict().count + 2)
        #expect(try Checkpoint.info(of: file) == Checkpoint.info(of: SafeTensorsFile.read(from: url)))
        let encoder = try Checkpoint.queryEncoder(file, info: try Checkpoint.info(of: file))
        #expect(encoder.stateDict().map(\.name) == model.encoderQ.stateDict().map(\.name))
        #expect(encoder.stateDict().map(\.tensor) == model.encoderQ.stateDict().map(\.tensor))

        let (wholeMethod, opt2) = trainer.makeModel()
        let whole = try #require(wholeMethod as? MoCoModel)
        var rng2 = SeededGenerator(seed: 0)
        _ = try Checkpoint.restore(SafeTensorsFile.read(from: url), model: whole, optimizer: opt2, rng: &rng2)
        whole.encoderQ.eval()
        let images = syntheticDataset(10, seed: 4)
        #expect(Evaluation.features(encoder, images, mean: [0.5], std: [0.25]) == Evaluation.features(whole.encoderQ, images, mean: [0.5], std: [0.25]))
        // The exported encoder is the same from the partial read as from the whole file.
        #expect(try Checkpoint.exportEncoder(file, mean: [0.5], std: [0.25]) == Checkpoint.exportEncoder(SafeTensorsFile.read(from: url), mean: [0.5], std: [0.25]))
    }

    /// A checkpoint without a query encoder is refused with the reason, not loaded half-way.
    @Test func queryEncoderNeedsItsTensors() throws {
        let spec = tinySpec()
        let (modelMethod, opt) = Trainer(spec: spec, train: train, eval: nil, outDirectory: temporaryDirectory()).makeModel()
        let model = try #require(modelMethod as? MoCoModel)
        let info = CheckpointInfo(step: 0, epoch: 0, knnTop1: nil, spec: spec, created: Date())
        var file = Checkpoint.encode(model: model, optimizer: opt, info: info, rng: SeededGenerator(seed: 0))
        file.tensors.removeAll { $0.name.hasPrefix("encoder_q.") }
        #expect { try Checkpoint.queryEncoder(file, info: info) } throws: {
            guard let e = $0 as? SafeTensorsError else { return false }
            return e.code == .missingKey && e.message.contains("no encoder_q.* tensors")
        }
        // One missing tensor: the strict load names it.
        var partial = Checkpoint.encode(model: model, optimizer: opt, info: info, rng: SeededGenerator(seed: 0))
        partial.tensors.removeAll { $0.name == "encoder_q.fc.2.bias" }
        #expect { try Checkpoint.queryEncoder(partial, info: info) } throws: {
            guard let e = $0 as? SafeTensorsError else { return false }
            return e.code == .missingKey && e.message.contains("query encoder: missing keys: encoder_q.fc.2.bias")
        }
    }

    @Test func exportCarriesTorchvisionKeys() throws {
        struct Reference: Decodable { let state_dict: [[Entry]]; enum Entry: Decodable {
            case s(String), other
            init(from d: Decoder) throws { self = (try? d.singleValueContainer().decode(String.self)).map { .s($0) } ?? .other }
        } }
        let refs = try JSONDecoder().decode([String: Reference].self,
                                            from: Data(contentsOf: TestSupport.Fixtures.root.appendingPathComponent("torchvision/models.json")))
        let expected = refs["resnet18_cifar_w32_in1"]!.state_dict.compactMap { row -> String? in
            if case .s(let k) = row[0], !k.hasPrefix("fc.") { return k } else { return nil }
        }
        var spec = tinySpec()
        spec.model.width = 32
        let trainer = Trainer(spec: spec, train: train, eval: nil, outDirectory: temporaryDirectory())
        let (modelMethod, opt) = trainer.makeModel()
        let model = try #require(modelMethod as? MoCoModel)
        let file = Checkpoint.encode(model: model, optimizer: opt, info: CheckpointInfo(step: 0, epoch: 0, knnTop1: nil, spec: spec, created: Date()),
                                     rng: SeededGenerator(seed: 0))
        let exported = try Checkpoint.exportEncoder(file, mean: [0.25], std: [0.5])
        #expect(exported.tensors.map(\.name) == expected)
        #expect(exported.metadata["arch"] == "resnet18" && exported.metadata["stem"] == "cifar" && exported.metadata["width"] == "32")
        #expect(exported.metadata["in_channels"] == "1" && exported.metadata["mean"] == "[0.25]" && exported.metadata["std"] == "[0.5]")
    }

    /// Features come out in dataset order whatever the batching.
    @Test func embeddingsAreInDatasetOrder() {
        let trainer = Trainer(spec: tinySpec(), train: train, eval: nil, outDirectory: temporaryDirectory())
        let (model, _) = trainer.makeModel()
        let all = Evaluation.features(model.encoder, eval, mean: [0.3], std: [0.3], batch: 7)
        let dim = model.encoder.config.featureDimension
        #expect(all.count == eval.count * dim)
        for i in [0, 13, 29] {
            let one = Evaluation.features(model.encoder, eval.prefix(i + 1), mean: [0.3], std: [0.3], batch: 1)
            #expect(closeness(Array(one.suffix(dim)), Array(all[(i * dim)..<((i + 1) * dim)]), rtol: 1e-4, atol: 1e-5).ok)
        }
    }

    @Test func knnOnSeparableFeatures() {
        // Bank: 3 clusters; each query next to its cluster's center.
        let bank: [Float] = [1, 0, 0.9, 0.1, 0, 1, 0.1, 0.9, -1, 0, -0.9, -0.1]
        let labels = [0, 0, 1, 1, 2, 2]
        let queries: [Float] = [0.95, 0.05, 0.05, 0.95, -0.95, 0.05]
        var b = bank, q = queries
        Evaluation.normalizeRows(&b, dim: 2)
        Evaluation.normalizeRows(&q, dim: 2)
        #expect(Evaluation.knnTop1(bank: b, bankLabels: labels, queries: q, queryLabels: [0, 1, 2], dim: 2, k: 2, t: 0.1, classes: 3) == 100)
        #expect(Evaluation.knnTop1(bank: b, bankLabels: labels, queries: q, queryLabels: [1, 1, 1], dim: 2, k: 2, t: 0.1, classes: 3) < 50)
    }

    @Test func preflightChecks() throws {
        var spec = tinySpec()
        spec.optim.batch_size = 128
        #expect(throws: SpecError.self) { try Preflight.check(spec, train: train, eval: nil) }
        let warn = try Preflight.check(tinySpec(), train: syntheticDataset(20, seed: 3), eval: nil)
        #expect(warn.warnings.contains { $0.contains("stale") })
    }

    @Test func dataPathsStayInsideTheRoots() throws {
        let root = temporaryDirectory(), outside = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: root); try? FileManager.default.removeItem(at: outside) }
        try FileManager.default.createDirectory(at: root.appendingPathComponent("ok"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(at: root.appendingPathComponent("escape"), withDestinationURL: outside)
        #expect(try DataSources.resolve("ok", roots: [root.path], allowAbsolute: false) == root.appendingPathComponent("ok").path)
        // An absolute path inside the root is fine; outside it is not.
        let inside = URL(fileURLWithPath: root.appendingPathComponent("ok").path).resolvingSymlinksInPath().path
        #expect(try DataSources.resolve(root.appendingPathComponent("ok").path, roots: [root.path], allowAbsolute: false) == inside)
        for bad in ["../x", "ok/../../x", "/etc", "escape"] {
            #expect(throws: DataError.self, "\(bad)") { try DataSources.resolve(bad, roots: [root.path], allowAbsolute: false) }
        }
    }
}
