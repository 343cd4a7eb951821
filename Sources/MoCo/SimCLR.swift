import Autograd
import Collectives
import Foundation
import Kernels
import NN

/// SimCLR (Chen, Kornblith, Norouzi, Hinton 2020, arXiv 2002.05709, Algorithm 1): one encoder f
/// with the projection head g(h) = W⁽²⁾σ(W⁽¹⁾h) as its `fc` (`fc.0` Linear, `fc.1` ReLU, `fc.2`
/// Linear), both views of every image through it as one batch of 2N, and NT-Xent over the 2N
/// projections: each view's positive is the other view of its image, the other 2N−2 views its
/// negatives. No momentum encoder and no queue: the negatives come from the batch, so their
/// number grows with it. Its state is `encoder_q.*`.
public final class SimCLR: TrainingMethod {
    public let encoder: ResNet
    public let temperature: Float
    public var precision: Precision = .fp32
    public var isTraining = true

    /// `mlpHidden`: the head's hidden width (nil: the backbone's feature width, as the paper).
    public init(config: ResNetConfig, mlpHidden: Int?, temperature: Float, rng: inout SeededGenerator) {
        encoder = MoCoModel.makeEncoder(config: config, mlpHidden: mlpHidden, bnSplits: 1, rng: &rng)
        self.temperature = temperature
    }

    public var children: [(String, any Module)] { [("encoder_q", encoder)] }
    public var trainable: [(String, Tensor)] { encoder.namedParameters() }

    /// ln(2N−1): the positive no more likely than any of a view's 2N−1 candidates.
    public func lossAtChance(batch: Int) -> Double { log(Double(max(2 * batch - 1, 1))) }

    /// Algorithm 1: z = g(f(x̃)) for the 2N views, NT-Xent over them, one optimizer step.
    public func trainStep(_ x1: Tensor, _ x2: Tensor, optimizer: any Optimizer, progress: Double, rng: inout SeededGenerator) -> StepDiagnostics {
        let (loss, accuracy, std) = Autocast.with(precision) { () -> (Tensor, Float, Float) in
            let z = encoder(concat([x1, x2], axis: 0))                   // 2N x dim: view 1 of every image, then view 2
            let (loss, accuracy) = ntXentLoss(z, temperature: temperature)
            return (loss, accuracy, featureStd(l2Normalized(z)))
        }
        return optimize(loss, instanceAccuracy: accuracy, featureStd: std, optimizer: optimizer)
    }

    public func trainStep(_ x1: Tensor, _ x2: Tensor, optimizer: any Optimizer, progress: Double, rng: inout SeededGenerator,
                          group: Communicator) throws -> StepDiagnostics {
        throw SpecError([FieldIssue("distributed.processes", "must be 1 for method simclr: data parallelism covers moco_v1 and moco_v2")])
    }
}
