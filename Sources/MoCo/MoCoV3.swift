import Autograd
import Collectives
import Foundation
import Kernels
import NN

/// MoCo v3 for ResNets (Chen, Xie, He 2021, arXiv 2104.02057, Algorithm 1 and its code's
/// `MoCo_ResNet`): a base encoder with a projection head and a prediction head, a momentum
/// encoder with a projection head that follows the base by EMA, and a symmetric contrastive loss
/// over in-batch keys (no queue), scaled by 2τ. The momentum follows a half-cosine from its base
/// value to 1 over training.
///
/// Heads as the code builds them (`_build_mlp`): the projector `fc` is Linear (no bias), BN,
/// ReLU, Linear (no bias), BN without affine parameters; the predictor is Linear (no bias), BN,
/// ReLU, Linear (no bias). Its state is `encoder_q.*` (the base encoder and projector),
/// `encoder_k.*` (the momentum encoder and projector) and `predictor.*`.
public final class MoCoV3: TrainingMethod {
    public let encoderQ: ResNet
    public let encoderK: ResNet
    public let predictor: Sequential
    /// The momentum at the start; it rises to 1 by the end (`momentum(at:)`).
    public let baseMomentum: Float
    public let temperature: Float
    public var precision: Precision = .fp32
    public var isTraining = true
    let paramsQ: [Tensor]
    let paramsK: [Tensor]

    /// `mlpHidden`: the heads' hidden width (the paper's 4096); `config.numClasses` is the output dimension.
    public init(config: ResNetConfig, mlpHidden: Int, baseMomentum: Float, temperature: Float, rng: inout SeededGenerator) {
        encoderQ = Self.makeEncoder(config: config, mlpHidden: mlpHidden, rng: &rng)
        encoderK = Self.makeEncoder(config: config, mlpHidden: mlpHidden, rng: &rng)
        let dim = config.numClasses
        predictor = Sequential([Linear(inputFeatures: dim, outputFeatures: mlpHidden, bias: false, using: &rng), BatchNorm(features: mlpHidden),
                                ReLU(), Linear(inputFeatures: mlpHidden, outputFeatures: dim, bias: false, using: &rng)])
        copyState(of: encoderQ, into: encoderK)
        paramsQ = encoderQ.parameters()
        paramsK = encoderK.parameters()
        for p in paramsK { p.requiresGrad = false }
        self.baseMomentum = baseMomentum
        self.temperature = temperature
    }

    /// A ResNet whose `fc` is MoCo v3's projector (`fc.0` Linear, `fc.1` BN, `fc.2` ReLU, `fc.3`
    /// Linear, `fc.4` BN without affine parameters).
    public static func makeEncoder(config: ResNetConfig, mlpHidden: Int, rng: inout SeededGenerator) -> ResNet {
        let e = ResNet(config, using: &rng)
        e.fc = Sequential([Linear(inputFeatures: config.featureDimension, outputFeatures: mlpHidden, bias: false, using: &rng),
                           BatchNorm(features: mlpHidden), ReLU(),
                           Linear(inputFeatures: mlpHidden, outputFeatures: config.numClasses, bias: false, using: &rng),
                           BatchNorm(features: config.numClasses, affine: false)])
        return e
    }

    public var encoder: ResNet { encoderQ }
    public var children: [(String, any Module)] { [("encoder_q", encoderQ), ("encoder_k", encoderK), ("predictor", predictor)] }
    public var trainable: [(String, Tensor)] {
        encoderQ.namedParameters() + predictor.namedParameters().map { ("predictor.\($0.0)", $0.1) }
    }

    /// `1 − (1 − m₀)·(1 + cos(π·progress))/2`: m₀ at the start, 1 at the end (the code's
    /// `adjust_moco_momentum`).
    public func momentum(at progress: Double) -> Float {
        1 - (1 - baseMomentum) * Float(0.5 * (1 + cos(Double.pi * progress)))
    }

    /// 2·2τ·ln N: both terms at chance (each key no more likely than the batch's N).
    public func lossAtChance(batch: Int) -> Double { 4 * Double(temperature) * log(Double(max(batch, 1))) }

    /// Algorithm 1: queries through the base encoder and the predictor, keys through the
    /// momentum encoder (after its EMA update), `ctr(q1, k2) + ctr(q2, k1)`, one optimizer step.
    public func trainStep(_ x1: Tensor, _ x2: Tensor, optimizer: any Optimizer, progress: Double, rng: inout SeededGenerator) -> StepDiagnostics {
        MoCo.momentumUpdate(paramsK, toward: paramsQ, momentum: momentum(at: progress))
        let (loss, accuracy, std) = Autocast.with(precision) { () -> (Tensor, Float, Float) in
            let q1 = predictor(encoderQ(x1)), q2 = predictor(encoderQ(x2))
            let (k1, k2) = GradMode.withNoGrad { (encoderK(x1), encoderK(x2)) }
            let (l12, a12) = inBatchContrastiveLoss(q1, k2, temperature: temperature)
            let (l21, a21) = inBatchContrastiveLoss(q2, k1, temperature: temperature)
            return (l12 + l21, (a12 + a21) / 2, featureStd(l2Normalized(q1)))
        }
        return optimize(loss, instanceAccuracy: accuracy, featureStd: std, optimizer: optimizer)
    }

    public func trainStep(_ x1: Tensor, _ x2: Tensor, optimizer: any Optimizer, progress: Double, rng: inout SeededGenerator,
                          group: Communicator) throws -> StepDiagnostics {
        throw SpecError([FieldIssue("distributed.processes", "must be 1 for method moco_v3: data parallelism covers moco_v1 and moco_v2")])
    }
}
