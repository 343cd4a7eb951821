import Autograd
import Data
import Foundation
import Kernels
@testable import MoCo
import NN
import TestSupport
import Testing

/// Every method on the one interface: MoCo v1/v2, SimCLR and MoCo v3 train through the same
/// trainer, checkpoint, resume exactly, and export and evaluate their encoder; their specs
/// validate their own fields.
@Suite(.serialized) struct MethodInterfaceTests {
    let train = syntheticDataset(64, seed: 1)
    let eval = syntheticDataset(30, seed: 2)

    /// A tiny job of `method` (its own section, LARS for SimCLR and MoCo v3).
    static func spec(_ method: JobSpec.Method, epochs: Int = 2, everySteps: Int? = nil) -> JobSpec {
        let section = switch method {
        case .moco_v1, .moco_v2: #""moco": {"queue": 32, "momentum": 0.9, "temperature": 0.2, "bn_splits": 2},"#
        case .simclr: #""simclr": {"temperature": 0.5},"#
        case .moco_v3: #""moco_v3": {"momentum": 0.9, "temperature": 0.2},"#
        }
        let optimizer = method.hasQueue ? "sgd" : "lars"
        let json = """
        {"name": "tiny-\(method.rawValue)", "method": "\(method.rawValue)", "data": {"format": "npy", "path": "unused"},
         "eval": {"format": "npy", "path": "unused", "knn_k": 10, "knn_t": 0.1},
         "model": {"arch": "resnet18", "stem": "cifar", "width": 4, "in_channels": 1, "dim": 8, "mlp_hidden": 16},
         \(section)
         "augment": {"preset": "v2", "size": 8},
         "optim": {"batch_size": 16, "epochs": \(epochs), "lr": 0.05, "lr_scaling": "none", "schedule": "cosine_step", "warmup_epochs": 1,
                   "optimizer": "\(optimizer)"},
         "checkpoint": {"every_epochs": 1, "every_steps": \(everySteps.map(String.init) ?? "null"), "keep_last": 100, "keep_best": 1},
         "seed": 3, "threads": 1}
        """
        return try! JobSpec.parse(Data(json.utf8))
    }

    static func points(_ dir: URL) -> [MetricPoint] {
        let text = (try? String(contentsOf: dir.appendingPathComponent("metrics.jsonl"), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { try? JSONDecoder().decode(MetricPoint.self, from: Data($0.utf8)) }
    }

    /// 6 steps straight, or 3, a stop, a resume from the checkpoint and 3 more: identical losses
    /// and checkpoints (every tensor of the method's state and the optimizer's), for every method.
    @Test(arguments: JobSpec.Method.allCases)
    func everyMethodResumesExactly(method: JobSpec.Method) throws {
        let a = temporaryDirectory(), b = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: a); try? FileManager.default.removeItem(at: b) }
        let spec = Self.spec(method, everySteps: 3)
        #expect(try Trainer(spec: spec, train: train, eval: nil, outDirectory: a, workers: 2).run(stopAfterSteps: 6) == .stopped(step: 6))
        #expect(try Trainer(spec: spec, train: train, eval: nil, outDirectory: b, workers: 0).run(stopAfterSteps: 3) == .stopped(step: 3))
        let t2 = Trainer(spec: spec, train: train, eval: nil, outDirectory: b, workers: 1)
        let resumeFrom = try #require(t2.store.list().first { $0.step == 3 })
        #expect(try t2.run(resume: resumeFrom.url, stopAfterSteps: 6) == .stopped(step: 6))
        let la = Self.points(a).compactMap(\.loss), lb = Self.points(b).compactMap(\.loss)
        #expect(la.count == 6 && la == lb && la.allSatisfy(\.isFinite), "\(la) vs \(lb)")
        let fa = try SafeTensorsFile.read(from: Trainer(spec: spec, train: train, eval: nil, outDirectory: a).store.list().last!.url)
        let fb = try SafeTensorsFile.read(from: t2.store.list().last!.url)
        #expect(fa.tensors.map(\.name) == fb.tensors.map(\.name))
        for (x, y) in zip(fa.tensors, fb.tensors) { #expect(x.tensor == y.tensor, "\(method): \(x.name) differs after resume") }
        // Momentum buffers for every trainable tensor (after 6 steps each has one).
        let (model, _) = t2.makeModel()
        #expect(fa.tensors.filter { $0.name.hasPrefix("optimizer.momentum_buffer.") }.count == model.trainable.count)
    }

    /// A whole run of each method: its loss at chance on every step point, the kNN monitor on its
    /// encoder, and an export with torchvision's keys (no head) that a fresh encoder loads.
    @Test(arguments: JobSpec.Method.allCases)
    func everyMethodTrainsEvaluatesAndExports(method: JobSpec.Method) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let spec = Self.spec(method)
        let trainer = Trainer(spec: spec, train: train, eval: eval, outDirectory: dir, workers: 1)
        #expect(try trainer.run() == .finished)
        let points = Self.points(dir)
        let (model, _) = trainer.makeModel()
        let chance = model.lossAtChance(batch: 16)
        let steps = points.filter { $0.kind == .step }
        #expect(steps.count == 8 && steps.allSatisfy { $0.loss_at_chance == chance && ($0.instance_accuracy ?? -1) >= 0 && ($0.feature_std ?? -1) >= 0 })
        #expect(points.filter { $0.kind == .eval }.count == 2)
        let last = try #require(trainer.store.list().last)
        let file = try SafeTensorsFile.read(from: last.url)
        let info = try Checkpoint.info(of: file)
        #expect(info.spec.method == method)
        let encoder = try Checkpoint.queryEncoder(try Checkpoint.readQueryEncoder(from: last.url), info: info)
        let exported = try Checkpoint.exportEncoder(file, mean: [0.5], std: [0.25])
        #expect(!exported.tensors.isEmpty && exported.tensors.allSatisfy { !$0.name.hasPrefix("fc.") && !$0.name.hasPrefix("encoder") })
        let backbone = ResNet(ResNetConfig(arch: .resnet18, stem: .cifar, width: 4, inChannels: 1, numClasses: 0), using: &Self.rng)
        try backbone.loadStateDict(exported.byName, strict: true)
        #expect(backbone.stateDict().map(\.tensor) == encoder.stateDict().filter { !$0.name.hasPrefix("fc.") }.map(\.tensor))
    }
    nonisolated(unsafe) static var rng = SeededGenerator(seed: 0)

    /// MoCo v3's state under the official code's layout (base and momentum encoders with the
    /// projector as `fc`, the predictor beside them), its momentum schedule and its loss at chance.
    @Test func mocoV3LayoutScheduleAndChance() {
        var rng = SeededGenerator(seed: 1)
        let m = MoCoV3(config: ResNetConfig(arch: .resnet18, stem: .cifar, width: 4, inChannels: 1, numClasses: 8), mlpHidden: 16,
                       baseMomentum: 0.99, temperature: 0.2, rng: &rng)
        let keys = m.stateEntries().map(\.key)
        let head = keys.filter { $0.hasPrefix("encoder_q.fc.") || $0.hasPrefix("predictor.") }
        #expect(head == ["encoder_q.fc.0.weight", "encoder_q.fc.1.weight", "encoder_q.fc.1.bias", "encoder_q.fc.1.running_mean",
                         "encoder_q.fc.1.running_var", "encoder_q.fc.1.num_batches_tracked", "encoder_q.fc.3.weight",
                         "encoder_q.fc.4.running_mean", "encoder_q.fc.4.running_var", "encoder_q.fc.4.num_batches_tracked",
                         "predictor.0.weight", "predictor.1.weight", "predictor.1.bias", "predictor.1.running_mean",
                         "predictor.1.running_var", "predictor.1.num_batches_tracked", "predictor.3.weight"])
        #expect(keys.filter { $0.hasPrefix("encoder_k.") }.count == keys.filter { $0.hasPrefix("encoder_q.") }.count)
        // Trainable: the base encoder with its projector, and the predictor; not the momentum encoder.
        #expect(m.trainable.count == m.encoderQ.parameters().count + 4 && m.trainable.allSatisfy { !$0.0.hasPrefix("encoder_k") })
        for (progress, expected) in [(0.0, 0.99), (0.5, 0.995), (1.0, 1.0)] {
            #expect(abs(Double(m.momentum(at: progress)) - expected) < 1e-6, "momentum at \(progress)")
        }
        #expect(abs(m.lossAtChance(batch: 16) - 4 * Double(Float(0.2)) * log(16.0)) < 1e-12)
        // The momentum encoder starts as a copy of the base encoder.
        #expect(zip(m.encoderQ.parameters(), m.encoderK.parameters()).allSatisfy { $0.toArray() == $1.toArray() })
    }

    /// Each method's preset fills every field from its section alone; another method's section
    /// is an unknown field; each section's values are range-checked by path.
    @Test func presetsAndSectionsPerMethod() throws {
        func parse(_ json: String) -> Result<JobSpec, SpecError> { Result { () throws(SpecError) in try JobSpec.parse(Data(json.utf8)) } }
        let simclr = try parse(#"{"method": "simclr", "data": {"format": "idx", "path": "x"}}"#).get()
        #expect(simclr.simclr?.temperature == 0.5 && simclr.moco == nil && simclr.optim.optimizer == .lars && simclr.optim.warmup_epochs == 10)
        let v3 = try parse(#"{"method": "moco_v3", "data": {"format": "idx", "path": "x"}}"#).get()
        #expect(v3.moco_v3 == .init(momentum: 0.99, temperature: 1.0) && v3.model.dim == 256 && v3.model.mlp_hidden == 4096 && v3.optim.lr == 0.6)
        let v2 = try parse(#"{"data": {"format": "idx", "path": "x"}}"#).get()
        #expect(v2.optim.optimizer == .sgd && v2.simclr == nil && v2.moco_v3 == nil)
        // A spec round-trips through its canonical JSON (as checkpoints store it).
        for s in [simclr, v3, v2] { #expect(try JobSpec.parse(Data(s.canonicalJSON().utf8)) == s) }

        func problems(_ json: String) -> [String] {
            if case .failure(let e) = parse(json) { return e.issues.map(\.description) }
            return []
        }
        #expect(problems(#"{"method": "simclr", "data": {"format": "idx", "path": "x"}, "moco": {"queue": 4096}}"#) == ["moco: unknown field"])
        #expect(problems(#"{"data": {"format": "idx", "path": "x"}, "simclr": {"temperature": 0.1}}"#) == ["simclr: unknown field"])
        #expect(problems(#"{"method": "moco_v3", "data": {"format": "idx", "path": "x"}, "moco_v3": {"momentum": 1, "temperature": 0}}"#)
                == ["moco_v3.momentum: must be in [0, 1)", "moco_v3.temperature: must be between 0.0001 and 100"])
        #expect(problems(#"{"method": "simclr", "data": {"format": "idx", "path": "x"}, "optim": {"optimizer": "adam"}}"#)
                == ["optim.optimizer: must be one of sgd, lars"])
        #expect(problems(#"{"method": "simclr", "data": {"format": "idx", "path": "x"}, "simclr": {"temperature": -1}, "optim": {"trust_coefficient": 0}}"#)
                == ["simclr.temperature: must be between 0.0001 and 100", "optim.trust_coefficient: must be in (0, 1]"])
        #expect(problems(#"{"method": "moco_v3", "data": {"format": "idx", "path": "x"}, "model": {"mlp_hidden": 0}}"#)
                == ["model.mlp_hidden: must be above 0 for moco_v3 (its projector and predictor are MLPs), or null"])
        #expect(problems(#"{"method": "simclr", "data": {"format": "idx", "path": "x"}, "distributed": {"processes": 2}}"#)
                == ["distributed.processes: must be 1 for method simclr: data parallelism covers moco_v1 and moco_v2"])
    }
}
