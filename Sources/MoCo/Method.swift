import Autograd
import Collectives
import Kernels
import NN

/// A self-supervised method as the trainer runs it: MoCo v1 and v2 (`MoCoModel`), SimCLR
/// (`SimCLR`) and MoCo v3 (`MoCoV3`). The trainer, checkpoints, the kNN monitor, export and
/// embed see only this interface.
///
/// - Modules and state: a method is a `Module` whose state entries, under their checkpoint keys
///   (`encoder_q.*` for the encoder every method has, then the method's own: `encoder_k.*`,
///   `queue`, `predictor.*`), are what a checkpoint keeps of it besides the optimizer.
/// - The step: `trainStep` reads like the paper's pseudocode, in one place per method: views in,
///   loss and diagnostics out, and what follows the optimizer step (EMA update, enqueue) inside.
public protocol TrainingMethod: Module {
    /// The encoder whose backbone is the learned representation (kNN, export, embed), its `fc`
    /// the method's projection head; checkpoints keep it as `encoder_q.*` for every method.
    var encoder: ResNet { get }
    /// What the optimizer trains, with the keys their momentum buffers take in a checkpoint
    /// (`optimizer.momentum_buffer.<key>`).
    var trainable: [(String, Tensor)] { get }
    /// The precision the forward passes compute in (`Autocast`); the state is fp32 either way.
    var precision: Precision { get set }
    /// The loss of features that carry no information (the curves' reference line) at a global
    /// batch of `batch` images.
    func lossAtChance(batch: Int) -> Double
    /// One training step on one process: the forward pass; then, when the loss is finite, the
    /// backward pass, the optimizer step and what follows it. A non-finite loss changes nothing
    /// (the caller stops the run). `progress` is the share of training done before this step
    /// (for schedules inside the method, such as MoCo v3's momentum).
    func trainStep(_ x1: Tensor, _ x2: Tensor, optimizer: any Optimizer, progress: Double, rng: inout SeededGenerator) -> StepDiagnostics
    /// The same step on this rank's block of every global batch, the ranks of `group` together
    /// (see `DataParallel.swift`).
    func trainStep(_ x1: Tensor, _ x2: Tensor, optimizer: any Optimizer, progress: Double, rng: inout SeededGenerator,
                   group: Communicator) throws -> StepDiagnostics
}

/// What one step reports: the loss (on several ranks, the global batch's), and the collapse
/// diagnostics every method has, plus the all-reduce's cost on several ranks.
public struct StepDiagnostics: Sendable {
    public var loss: Float
    /// How often the positive ranks first among the candidates.
    public var instanceAccuracy: Float
    /// Mean per-dimension standard deviation of the normalized features across the batch
    /// (about 1/sqrt(dim) when healthy, near 0 when collapsed).
    public var featureStd: Float
    public var allReduce: AllReduceStats?
    public init(loss: Float, instanceAccuracy: Float, featureStd: Float, allReduce: AllReduceStats? = nil) {
        self.loss = loss; self.instanceAccuracy = instanceAccuracy; self.featureStd = featureStd; self.allReduce = allReduce
    }
}

extension TrainingMethod {
    /// The method's state (its `Module` state dict) plus the optimizer's momentum buffers.
    public func checkpointTensors(optimizer: any Optimizer) -> [(name: String, tensor: SafeTensor)] {
        var out = stateDict()
        for ((name, _), buffer) in zip(trainable, optimizer.momentumBuffers) {
            if let buffer { out.append(("optimizer.momentum_buffer.\(name)", SafeTensor(buffer))) }
        }
        return out
    }

    /// Restores the method's state and the optimizer's momentum buffers: every key of the
    /// method's state must be present with its shape.
    public func restore(from all: [String: SafeTensor], optimizer: any Optimizer) throws(SafeTensorsError) {
        let keys = stateEntries().map(\.key)
        let missing = keys.filter { all[$0] == nil }
        if !missing.isEmpty {
            throw SafeTensorsError(.missingKey, "checkpoint lacks \(missing.prefix(10).joined(separator: ", "))\(missing.count > 10 ? " and \(missing.count - 10) more" : "")")
        }
        try loadStateDict(all, strict: false)
        var buffers: [Tensor?] = []
        for (name, p) in trainable {
            if let b = all["optimizer.momentum_buffer.\(name)"] {
                guard b.shape == p.shape else { throw SafeTensorsError(.shapeMismatch, "momentum buffer \(name): \(b.shape) vs \(p.shape)") }
                buffers.append(try b.tensor())
            } else {
                buffers.append(nil)
            }
        }
        optimizer.loadMomentumBuffers(buffers)
    }
}

extension TrainingMethod {
    /// The end of a step on one process: when `loss` is finite, the backward pass and the
    /// optimizer step; the diagnostics either way (a non-finite loss changes nothing).
    func optimize(_ loss: Tensor, instanceAccuracy: Float, featureStd: Float, optimizer: any Optimizer) -> StepDiagnostics {
        let value = loss.item
        if value.isFinite {
            optimizer.zeroGrad()
            loss.backward()
            optimizer.step()
        }
        return StepDiagnostics(loss: value, instanceAccuracy: instanceAccuracy, featureStd: featureStd)
    }
}

/// Mean over dimensions of the per-dimension standard deviation of `z` (N x D) across the batch.
func featureStd(_ z: Tensor) -> Float {
    let n = z.shape[0], d = z.shape[1]
    return z.plain().withUnsafeFloats { v in
        var total: Float = 0
        for j in 0..<d {
            var s: Float = 0, s2: Float = 0
            for i in 0..<n { let x = v[i * d + j]; s += x; s2 += x * x }
            let mean = s / Float(n)
            total += max(s2 / Float(n) - mean * mean, 0).squareRoot()
        }
        return total / Float(d)
    }
}

/// The EMA of a momentum encoder: `θk ← m·θk + (1−m)·θq` for every pair of parameters.
func momentumUpdate(_ target: [Tensor], toward source: [Tensor], momentum: Float) {
    for (k, q) in zip(target, source) {
        k.withUnsafeMutableFloats { fk in
            q.withUnsafeFloats { fq in Vector.ema(fk.baseAddress!, toward: fq.baseAddress!, count: k.count, momentum: momentum) }
        }
    }
}

/// Copies every parameter and buffer of `source` into `target` (same architecture): a momentum
/// encoder's start.
func copyState(of source: any Module, into target: any Module) {
    for (k, q) in zip(target.stateEntries(), source.stateEntries()) {
        switch (k, q) {
        case (.parameter(_, let a), .parameter(_, let b)), (.buffer(_, let a), .buffer(_, let b)): a.assign(b)
        default: break
        }
    }
}

/// The methods as a spec names them.
public enum Methods {
    /// The spec's method, built as a fresh run builds it (seeded by `rng`). With N processes a
    /// MoCo process splits its block of the batch into `bn_splits / N` groups, so the split-BN
    /// groups are those of one process on the whole batch.
    public static func make(_ spec: JobSpec, rng: inout SeededGenerator) -> any TrainingMethod {
        let method: any TrainingMethod
        switch spec.method {
        case .moco_v1, .moco_v2:
            let m = spec.moco!
            method = MoCoModel(config: spec.resnetConfig, mlpHidden: spec.model.mlp_hidden, queueSize: m.queue, momentum: m.momentum,
                               temperature: m.temperature, bnSplits: m.bn_splits / spec.distributed.processes, symmetric: m.symmetric, rng: &rng)
        case .simclr:
            method = SimCLR(config: spec.resnetConfig, mlpHidden: spec.model.mlp_hidden, temperature: spec.simclr!.temperature, rng: &rng)
        case .moco_v3:
            let v3 = spec.moco_v3!
            method = MoCoV3(config: spec.resnetConfig, mlpHidden: spec.model.mlp_hidden ?? spec.resnetConfig.featureDimension,
                            baseMomentum: v3.momentum, temperature: v3.temperature, rng: &rng)
        }
        method.precision = spec.precision
        return method
    }

    /// The encoder (backbone and projection head) the spec's method trains, as a checkpoint's
    /// `encoder_q.*` holds it; its initial values are meant to be overwritten.
    public static func makeEncoder(_ spec: JobSpec, rng: inout SeededGenerator) -> ResNet {
        switch spec.method {
        case .moco_v1, .moco_v2, .simclr:
            MoCoModel.makeEncoder(config: spec.resnetConfig, mlpHidden: spec.model.mlp_hidden, bnSplits: spec.moco?.bn_splits ?? 1, rng: &rng)
        case .moco_v3:
            MoCoV3.makeEncoder(config: spec.resnetConfig, mlpHidden: spec.model.mlp_hidden ?? spec.resnetConfig.featureDimension, rng: &rng)
        }
    }

    /// The spec's optimizer over the method's trainable parameters, at the spec's base rate.
    public static func makeOptimizer(_ spec: JobSpec, for method: any TrainingMethod) -> any Optimizer {
        let parameters = method.trainable.map(\.1), o = spec.optim
        return switch o.optimizer {
        case .sgd: SGD(parameters: parameters, learningRate: spec.effectiveLearningRate, momentum: o.momentum, weightDecay: o.weight_decay)
        case .lars: LARS(parameters: parameters, learningRate: spec.effectiveLearningRate, momentum: o.momentum, weightDecay: o.weight_decay,
                         trustCoefficient: o.trust_coefficient)
        }
    }
}
