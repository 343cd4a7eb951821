import Foundation
import Kernels
import Autograd
import NN
@testable import MoCo
import Testing

@Suite struct SpecTests {
    static let example = Examples.fashionMNIST

    @Test func exampleParsesWithPresetDefaults() throws {
        let spec = try JobSpec.parse(Self.example)
        #expect(spec.name == "fmnist-v2" && spec.moco?.queue == 4096 && spec.model.width == 32)
        #expect(spec.optim.lr_scaling == .linear && spec.optim.warmup_epochs == 0)   // filled in from moco_v2
        // The minimal spec takes the paper's ImageNet defaults.
        let minimal = try JobSpec.parse(Data(#"{"data": {"path": "x"}}"#.utf8))
        #expect(minimal.moco?.queue == 65536 && minimal.moco?.momentum == 0.999 && minimal.moco?.temperature == 0.2)
        #expect(minimal.model.arch == .resnet50 && minimal.optim.schedule == .cosine && minimal.optim.epochs == 200)
        #expect(minimal.eval == nil)
        let v1 = try JobSpec.parse(Data(#"{"method": "moco_v1", "data": {"path": "x"}}"#.utf8))
        #expect(v1.moco?.temperature == 0.07 && v1.model.mlp_hidden == 0 && v1.augment.preset == .v1 && v1.optim.schedule == .step)
    }

    @Test func everyProblemIsListedWithItsPath() {
        let bad = #"""
        {"data": {"path": "x", "fromat": "idx"}, "optim": {"bacth_size": 3, "lr": -1, "epochs": "ten"}, "colour": 1}
        """#
        do {
            _ = try JobSpec.parse(Data(bad.utf8))
            Issue.record("accepted")
        } catch {
            let fields = Set(error.issues.map(\.field))
            #expect(fields.isSuperset(of: ["data.fromat", "optim.bacth_size", "colour"]), "\(error)")
        }
        do {
            _ = try JobSpec.parse(Data(#"{"data": {"path": "x"}, "optim": {"lr": -1, "batch_size": 100}, "moco": {"queue": 1001, "bn_splits": 3}}"#.utf8))
            Issue.record("accepted")
        } catch {
            let fields = error.issues.map(\.field)
            #expect(fields.contains("optim.lr") && fields.contains("moco.queue") && fields.contains("moco.bn_splits"), "\(error)")
        }
        do {
            _ = try JobSpec.parse(Data(#"{"data": {"path": "x"}, "optim": {"epochs": "ten"}}"#.utf8))
            Issue.record("accepted")
        } catch {
            #expect(error.issues.first?.field == "optim.epochs", "\(error)")
        }
        #expect(throws: SpecError.self) { try JobSpec.parse(Data("[1]".utf8)) }
        #expect(throws: SpecError.self) { try JobSpec.parse(Data("{".utf8)) }
    }

    /// Closed sets are enums; a value outside one is reported with its members, together with
    /// every other problem (a decoder alone would stop at the first).
    @Test func closedSetsAreReportedWithTheRest() {
        let bad = #"""
        {"data": {"path": "x", "format": "csv"}, "eval": {"path": "y", "format": "zip"}, "model": {"arch": "vgg", "stem": "tiny"},
         "augment": {"preset": "v3"}, "optim": {"lr_scaling": "sqrt", "schedule": "linear", "lr": -1}, "precision": "fp16"}
        """#
        do {
            _ = try JobSpec.parse(Data(bad.utf8))
            Issue.record("accepted")
        } catch {
            let found = Dictionary(error.issues.map { ($0.field, $0.problem) }, uniquingKeysWith: { a, _ in a })
            #expect(found == [
                "data.format": "must be one of idx, cifar10, cifar100, folder, npy, tar",
                "eval.format": "must be one of idx, cifar10, cifar100, folder, npy, tar",
                "model.arch": "must be one of resnet18, resnet34, resnet50",
                "model.stem": "must be one of imagenet, cifar",
                "augment.preset": "must be one of v2, v1, none",
                "optim.lr_scaling": "must be linear or none",
                "optim.schedule": "must be one of cosine, cosine_step, step, constant",
                "optim.lr": "must be positive and finite",
                "precision": "must be one of fp32, bf16",
            ], "\(error)")
        }
        // A value of the wrong type is named by the decoder.
        do {
            _ = try JobSpec.parse(Data(#"{"data": {"path": "x", "format": 3}}"#.utf8))
            Issue.record("accepted")
        } catch {
            #expect(error.issues.map(\.field) == ["data.format"] && error.issues[0].problem == "must be a string", "\(error)")
        }
        let ok = try? JobSpec.parse(Data(#"{"data": {"path": "x", "format": "npy"}, "optim": {"schedule": "cosine_step", "lr_scaling": "none"}}"#.utf8))
        #expect(ok?.data.format == .npy && ok?.optim.schedule == .cosine_step && ok?.optim.lr_scaling == JobSpec.LRScaling.none)
    }

    /// `precision` defaults to fp32; bf16 is refused where oneDNN has no bf16 kernels, with the
    /// field and the reason (a pure function of the machine's support, so tested as a table).
    @Test func precisionDefaultsToFP32AndBF16NeedsTheCPU() throws {
        let plain = try JobSpec.parse(Data(#"{"data": {"path": "x"}}"#.utf8))
        #expect(plain.precision == .fp32)
        let bf16 = try JobSpec.parse(Data(#"{"data": {"path": "x"}, "precision": "bf16"}"#.utf8))
        #expect(bf16.precision == .bf16)
        #expect(bf16.canonicalJSON().contains(#""precision":"bf16""#))
        let cases: [(Runtime.BF16Support, JobSpec, Bool)] = [
            (.init(avx512_bf16: true, amx_bf16: false, onednn_bf16: true, onednn_amx: false), bf16, false),
            (.init(avx512_bf16: true, amx_bf16: true, onednn_bf16: true, onednn_amx: true), bf16, false),
            (.init(avx512_bf16: false, amx_bf16: false, onednn_bf16: false, onednn_amx: false), bf16, true),
            (.init(avx512_bf16: true, amx_bf16: false, onednn_bf16: false, onednn_amx: false), bf16, true),
            (.init(avx512_bf16: false, amx_bf16: false, onednn_bf16: false, onednn_amx: false), plain, false),
        ]
        for (support, spec, refused) in cases {
            let issues = spec.machineIssues(bf16: support)
            #expect(issues.isEmpty != refused, "\(support) \(spec.precision): \(issues)")
            if refused { #expect(issues.map(\.field) == ["precision"] && issues[0].problem.contains("use fp32")) }
        }
    }

    @Test func learningRateScalesWithBatch() throws {
        let spec = try JobSpec.parse(Data(#"{"data": {"path": "x"}, "optim": {"batch_size": 512, "lr": 0.03}, "moco": {"queue": 65536}}"#.utf8))
        #expect(abs(spec.effectiveLearningRate - 0.06) < 1e-7)
    }
}

enum Examples {
    static var fashionMNIST: Data {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("examples/fashion-mnist.json")
        return try! Data(contentsOf: url)
    }
}

/// The dry run's memory estimate: its terms counted from the spec as the code holds them.
@Suite struct MemoryEstimateTests {
    /// The closed-form count of a backbone's floats equals the built network's parameters and
    /// batch-norm buffers, for every architecture and stem.
    @Test(arguments: [ResNetConfig.Arch.resnet18, .resnet34, .resnet50])
    func backboneSizeIsTheNetworksOwn(_ arch: ResNetConfig.Arch) {
        for stem in [ResNetConfig.Stem.cifar, .imagenet] {
            let config = ResNetConfig(arch: arch, stem: stem, width: 8, inChannels: 3, numClasses: 0)
            var rng = SeededGenerator(seed: 1)
            let net = ResNet(config, using: &rng)
            let floats = net.stateEntries().reduce(0) { sum, e in
                switch e {
                case .parameter(_, let t), .buffer(_, let t): sum + t.shape.reduce(1, *)
                case .counter: sum
                }
            }
            #expect(JobSpec.backboneParameters(config) == floats, "\(arch) \(stem)")
        }
    }

    @Test func termsFollowTheSpec() throws {
        let example = try JobSpec.parse(Data(contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("examples/fashion-mnist.json")))
        let e = example.memoryEstimate
        // ResNet-18 at width 32 on 28x28 images: 747,264 floats in its block maps per image (7 maps
        // a block), 0.8 of them kept (the measured slope), for the 256 queries.
        #expect(abs(e.activations - Int(4 * 747_264 * 0.8 * 256)) <= 4)
        // 60,000 + 10,000 images of 28x28 bytes, and 4 prefetched batches of two 28x28 float views.
        #expect(e.data == 70_000 * 784 + 4 * 2 * 256 * 784 * 4)
        #expect(e.total == e.runtime + e.data + e.model + e.activations + e.evaluation)
        var wider = example
        wider.model.width = 64
        #expect(abs(wider.memoryEstimate.activations - 2 * e.activations) <= 8 && wider.memoryEstimate.model > 3 * e.model)
        var simclr = example
        simclr.method = .simclr
        simclr.moco = nil
        #expect(abs(simclr.memoryEstimate.activations - 2 * e.activations) <= 8)   // both views keep their tape
        var streamed = example
        streamed.data = .init(format: .folder, path: "x", split: "train", limit: 1000, cache_mb: 16)
        #expect(streamed.memoryEstimate.data < e.data)
    }
}
