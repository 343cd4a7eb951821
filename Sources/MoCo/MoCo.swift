import Autograd
import Collectives
import Foundation
import Kernels
import NN

/// Momentum Contrast (He et al. 2019, arXiv 1911.05722, Algorithm 1; v2: Chen et al. 2020,
/// arXiv 2003.04297): a query encoder trained by SGD, a key encoder that follows it by EMA, and
/// a queue of past keys as negatives for the InfoNCE loss.
///
/// As a `TrainingMethod` its state is `queue`, `queue_ptr`, `encoder_q.*` and `encoder_k.*`
/// (the order of the official code's `state_dict`).
public final class MoCoModel: TrainingMethod {
    public let encoderQ: ResNet
    public let encoderK: ResNet
    /// The queue, one L2-normalized key per row: `K x dim`.
    public let queue: Tensor
    public var queuePointer = 0
    public let momentum: Float
    public let temperature: Float
    public let symmetric: Bool
    /// The precision the forward passes compute in (`Autocast`); parameters, gradients, the
    /// optimizer's state, the EMA and the queue are fp32 either way.
    public var precision: Precision = .fp32
    let paramsQ: [Tensor]
    let paramsK: [Tensor]

    /// Builds both encoders (the key encoder starts as a copy of the query encoder) and a queue of
    /// random unit vectors. `mlpHidden`: nil = feature width, 0 = linear head (v1).
    public init(config: ResNetConfig, mlpHidden: Int?, queueSize: Int, momentum: Float, temperature: Float,
                bnSplits: Int, symmetric: Bool, rng: inout SeededGenerator) {
        encoderQ = Self.makeEncoder(config: config, mlpHidden: mlpHidden, bnSplits: bnSplits, rng: &rng)
        encoderK = Self.makeEncoder(config: config, mlpHidden: mlpHidden, bnSplits: bnSplits, rng: &rng)
        copyState(of: encoderQ, into: encoderK)
        paramsQ = encoderQ.parameters()
        paramsK = encoderK.parameters()
        for p in paramsK { p.requiresGrad = false }
        queue = l2Normalized(Tensor.randn([queueSize, config.numClasses], using: &rng))
        self.momentum = momentum
        self.temperature = temperature
        self.symmetric = symmetric
    }

    // MARK: - TrainingMethod

    public var isTraining = true
    public var ownState: [StateEntry] {
        [.buffer("queue", queue),
         .counter("queue_ptr", get: { [unowned self] in Int64(queuePointer) }, set: { [unowned self] in queuePointer = Int($0) })]
    }
    public var children: [(String, any Module)] { [("encoder_q", encoderQ), ("encoder_k", encoderK)] }
    public var encoder: ResNet { encoderQ }
    public var trainable: [(String, Tensor)] { encoderQ.namedParameters() }

    /// ln(K+1): the loss when the positive is no more likely than any of the K negatives.
    public func lossAtChance(batch: Int) -> Double { log(Double(queue.shape[0] + 1)) }

    public func trainStep(_ x1: Tensor, _ x2: Tensor, optimizer: any Optimizer, progress: Double, rng: inout SeededGenerator) -> StepDiagnostics {
        let (result, loss) = trainStep(x1, x2, optimizer: optimizer, rng: &rng)
        return StepDiagnostics(loss: loss, instanceAccuracy: result.instanceAccuracy, featureStd: result.featureStd)
    }

    public func trainStep(_ x1: Tensor, _ x2: Tensor, optimizer: any Optimizer, progress: Double, rng: inout SeededGenerator,
                          group: Communicator) throws -> StepDiagnostics {
        let r = try trainStep(x1, x2, optimizer: optimizer, rng: &rng, group: group)
        return StepDiagnostics(loss: r.loss, instanceAccuracy: r.instanceAccuracy, featureStd: r.featureStd, allReduce: r.allReduce)
    }

    /// One encoder as the method builds it: a ResNet whose `fc` is the projection head (v2's MLP
    /// `fc.0`, `fc.1` ReLU, `fc.2`, or v1's linear `fc` when `mlpHidden` is 0), with split BN.
    /// The state-dict keys are those of a checkpoint's `encoder_q.*` after the prefix.
    public static func makeEncoder(config: ResNetConfig, mlpHidden: Int?, bnSplits: Int, rng: inout SeededGenerator) -> ResNet {
        let e = ResNet(config, using: &rng)
        let hidden = mlpHidden ?? config.featureDimension
        if hidden > 0 {
            // v2's MLP head takes fc's place: fc.0 Linear, fc.1 ReLU, fc.2 Linear (the MoCo code's naming).
            e.fc = Sequential([Linear(inputFeatures: config.featureDimension, outputFeatures: hidden, using: &rng), ReLU(),
                               Linear(inputFeatures: hidden, outputFeatures: config.numClasses, using: &rng)])
        }
        e.setBatchNormGroups(bnSplits)
        return e
    }

    /// `θk ← m·θk + (1−m)·θq` for every parameter (buffers are the key encoder's own).
    public func momentumUpdate() {
        MoCo.momentumUpdate(paramsK, toward: paramsQ, momentum: momentum)
    }

    /// Keys for `x` with shuffle BN on one process: the batch is permuted, encoded with split
    /// BN (each group's statistics then mix images from all over the batch), and un-permuted.
    public func keys(_ x: Tensor, rng: inout SeededGenerator) -> Tensor {
        let n = x.shape[0]
        var perm = Array(0..<n)
        perm.fisherYatesShuffle(using: &rng)
        return GradMode.withNoGrad {
            let k = l2Normalized(encoderK(gatherRows(x, perm)))      // N x dim, shuffled order
            var inverse = perm
            for (pos, i) in perm.enumerated() { inverse[i] = pos }
            return gatherRows(k, inverse)                            // original order
        }
    }

    /// InfoNCE of queries against their positive keys and the queue: logits `N x (1+K)` =
    /// `[q·k⁺, q·queueᵀ] / T`, cross entropy with the positive at index 0.
    public func contrastiveLoss(_ q: Tensor, _ k: Tensor) -> (loss: Tensor, instanceAccuracy: Float) {
        let positive = sumRows(multiply(q, k))                         // N x 1
        let negative = matmul(q, queue, transposeB: true)              // N x K
        let logits = concat([positive, negative], axis: 1) / temperature   // N x (1+K)
        let targets = [Int](repeating: 0, count: q.shape[0])
        return (crossEntropy(logits, targets: targets), instanceAccuracy(logits, targets: targets))
    }

    /// One forward pass of the method: the loss (graph recorded for the query encoder) and the
    /// keys to enqueue after the optimizer step.
    public func forward(_ x1: Tensor, _ x2: Tensor, rng: inout SeededGenerator) -> StepResult {
        momentumUpdate()
        return Autocast.with(precision) { forwardPasses(x1, x2, rng: &rng) }
    }

    func forwardPasses(_ x1: Tensor, _ x2: Tensor, rng: inout SeededGenerator) -> StepResult {
        if symmetric {
            let q1 = l2Normalized(encoderQ(x1)), q2 = l2Normalized(encoderQ(x2))
            let k1 = keys(x1, rng: &rng), k2 = keys(x2, rng: &rng)
            let (l12, a12) = contrastiveLoss(q1, k2), (l21, a21) = contrastiveLoss(q2, k1)
            return StepResult(loss: l12 + l21, keys: concat([k1, k2], axis: 0), instanceAccuracy: (a12 + a21) / 2,
                              featureStd: featureStd(q1))
        }
        let q = l2Normalized(encoderQ(x1))                            // N x dim
        let k = keys(x2, rng: &rng)                                    // N x dim
        let (loss, acc) = contrastiveLoss(q, k)
        return StepResult(loss: loss, keys: k, instanceAccuracy: acc, featureStd: featureStd(q))
    }

    /// One training step exactly as `moco train` and the daemon's workers run it (and as
    /// `mocobench step` times it): the forward pass; then, when the loss is finite, the query
    /// encoder's backward pass, the optimizer step and the enqueue of the keys. A non-finite loss
    /// changes nothing (the caller stops the run); its value is returned either way.
    public func trainStep(_ x1: Tensor, _ x2: Tensor, optimizer: any Optimizer, rng: inout SeededGenerator) -> (result: StepResult, loss: Float) {
        let result = forward(x1, x2, rng: &rng)
        let loss = result.loss.item
        guard loss.isFinite else { return (result, loss) }
        optimizer.zeroGrad()
        result.loss.backward()
        optimizer.step()
        enqueue(result.keys)
        return (result, loss)
    }

    /// Writes `keys` into the queue at the pointer and advances it (K is a multiple of the count).
    public func enqueue(_ keys: Tensor) {
        let n = keys.shape[0], dim = queue.shape[1], k = queue.shape[0]
        precondition(k % n == 0, "queue size \(k) is not a multiple of \(n) keys")
        let src = keys.plain()
        src.withUnsafeFloats { from in
            queue.withUnsafeMutableFloats { (to: UnsafeMutableBufferPointer<Float>) in
                (to.baseAddress! + queuePointer * dim).update(from: from.baseAddress!, count: n * dim)
            }
        }
        queuePointer = (queuePointer + n) % k
    }
}

public struct StepResult {
    public let loss: Tensor
    public let keys: Tensor
    public let instanceAccuracy: Float
    public let featureStd: Float
}

