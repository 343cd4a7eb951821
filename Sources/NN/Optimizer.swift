import Foundation
import Kernels
import Autograd

/// An optimizer over a fixed list of parameters with one momentum buffer each (what a
/// checkpoint keeps of it): SGD for MoCo, LARS for SimCLR and MoCo v3.
public protocol Optimizer: AnyObject {
    var parameters: [Tensor] { get }
    var learningRate: Float { get set }
    /// Momentum buffers in parameter order, nil until a parameter's first step.
    var momentumBuffers: [Tensor?] { get }
    /// Updates every parameter that has a gradient, in place.
    func step()
    /// Restores momentum buffers (e.g. from a checkpoint); nil entries mean "no step taken yet".
    func loadMomentumBuffers(_ buffers: [Tensor?])
}

extension Optimizer {
    /// Drops every gradient (PyTorch's `zero_grad(set_to_none=True)`); their memory returns to the pool.
    public func zeroGrad() {
        for p in parameters { p.grad = nil }
    }
}

/// Stochastic gradient descent with momentum and weight decay, exactly as `torch.optim.SGD`
/// (no dampening, no Nesterov): `d = g + wd·p; buf = m·buf + d (buf = d on the first step); p -= lr·buf`.
public final class SGD: Optimizer {
    public let parameters: [Tensor]
    public var learningRate: Float
    public let momentum: Float
    public let weightDecay: Float
    /// Momentum buffers in parameter order, nil until a parameter's first step.
    public private(set) var momentumBuffers: [Tensor?]

    public init(parameters: [Tensor], learningRate: Float, momentum: Float = 0, weightDecay: Float = 0) {
        self.parameters = parameters
        self.learningRate = learningRate
        self.momentum = momentum
        self.weightDecay = weightDecay
        momentumBuffers = Array(repeating: nil, count: parameters.count)
    }

    /// Updates every parameter that has a gradient, in place.
    public func step() {
        for (i, p) in parameters.enumerated() {
            guard let g = p.grad else { continue }
            precondition(g.desc == p.desc, "gradient layout differs from its parameter's")
            let first = momentum != 0 && momentumBuffers[i] == nil
            if first { momentumBuffers[i] = Tensor.zeros(p.shape) }
            let buffer = momentum != 0 ? momentumBuffers[i] : nil
            p.withUnsafeMutableFloats { fp in
                g.withUnsafeFloats { fg in
                    func update(_ fm: UnsafeMutablePointer<Float>?) {
                        Vector.sgdStep(parameter: fp.baseAddress!, gradient: fg.baseAddress!, momentumBuffer: fm, count: p.count,
                                       learningRate: learningRate, momentum: momentum, weightDecay: weightDecay, firstStep: first)
                    }
                    if let buffer { buffer.withUnsafeMutableFloats { update($0.baseAddress!) } } else { update(nil) }
                }
            }
        }
    }

    public func loadMomentumBuffers(_ buffers: [Tensor?]) {
        precondition(buffers.count == parameters.count)
        for (i, b) in buffers.enumerated() {
            if let b { precondition(b.shape == parameters[i].shape) }
        }
        momentumBuffers = buffers
    }
}

/// LARS (You, Gitman, Ginsburg 2017) as MoCo v3's code has it (`moco-v3/optimizer.py`; SimCLR's
/// recipe is the same rule): a parameter of more than one dimension (a weight) takes weight decay
/// and then the layer-wise trust ratio, `d = (g + wd·p) · η‖p‖/‖g + wd·p‖` (the ratio is 1 when
/// either norm is 0); biases and batch-norm parameters (one dimension) take neither, `d = g`.
/// Then momentum: `mu = m·mu + d` (mu starts at 0), `p -= lr·mu`.
public final class LARS: Optimizer {
    public let parameters: [Tensor]
    public var learningRate: Float
    public let momentum: Float
    public let weightDecay: Float
    /// η, the trust coefficient.
    public let trustCoefficient: Float
    public private(set) var momentumBuffers: [Tensor?]

    public init(parameters: [Tensor], learningRate: Float, momentum: Float = 0.9, weightDecay: Float = 0, trustCoefficient: Float = 0.001) {
        self.parameters = parameters
        self.learningRate = learningRate
        self.momentum = momentum
        self.weightDecay = weightDecay
        self.trustCoefficient = trustCoefficient
        momentumBuffers = Array(repeating: nil, count: parameters.count)
    }

    /// Whether a parameter takes weight decay and the trust ratio (a weight, not a bias or a
    /// batch-norm scale or shift).
    public static func adapts(_ p: Tensor) -> Bool { p.shape.count > 1 }

    public func step() {
        for (i, p) in parameters.enumerated() {
            guard let g = p.grad else { continue }
            precondition(g.desc == p.desc, "gradient layout differs from its parameter's")
            if momentumBuffers[i] == nil { momentumBuffers[i] = Tensor.zeros(p.shape) }
            let n = p.count, adapt = Self.adapts(p)
            let (lr, m, wd, eta) = (learningRate, momentum, weightDecay, trustCoefficient)
            p.withUnsafeMutableFloats { fp in
                g.withUnsafeFloats { fg in
                    momentumBuffers[i]!.withUnsafeMutableFloats { mu in
                        var scale: Float = 1
                        if adapt {
                            var pp: Double = 0, dd: Double = 0
                            for j in 0..<n {
                                let d = fg[j] + wd * fp[j]
                                pp += Double(fp[j] * fp[j]); dd += Double(d * d)
                            }
                            let pNorm = Float(pp.squareRoot()), dNorm = Float(dd.squareRoot())
                            if pNorm > 0 && dNorm > 0 { scale = eta * pNorm / dNorm }
                        }
                        for j in 0..<n {
                            let d = adapt ? (fg[j] + wd * fp[j]) * scale : fg[j]
                            mu[j] = m * mu[j] + d
                            fp[j] -= lr * mu[j]
                        }
                    }
                }
            }
        }
    }

    public func loadMomentumBuffers(_ buffers: [Tensor?]) {
        precondition(buffers.count == parameters.count)
        for (i, b) in buffers.enumerated() {
            if let b { precondition(b.shape == parameters[i].shape) }
        }
        momentumBuffers = buffers
    }
}

/// A learning-rate schedule: the rate at a point in training, as a pure function.
public enum LearningRateSchedule: Sendable, Hashable, Codable {
    /// Half-cosine from the base rate to 0 over `epochs`; `perStep` moves within an epoch too.
    case cosine(epochs: Int, perStep: Bool)
    /// Multiply by `gamma` at each milestone epoch (MoCo v1: 120 and 160 of 200, gamma 0.1).
    case multiStep(milestones: [Int], gamma: Float)
    /// The base rate throughout.
    case constant
    /// Linear ramp from 0 over the first `epochs` (counted in steps), then `then`.
    indirect case warmup(epochs: Int, then: LearningRateSchedule)

    /// The rate at `epoch` (0-based) and `step` within it (0-based) of `stepsPerEpoch`.
    public func rate(base: Float, epoch: Int, step: Int, stepsPerEpoch: Int) -> Float {
        switch self {
        case .constant:
            return base
        case .cosine(let epochs, let perStep):
            let progress = perStep ? (Double(epoch) + Double(step) / Double(max(stepsPerEpoch, 1))) : Double(epoch)
            return base * Float(0.5 * (1 + cos(Double.pi * progress / Double(max(epochs, 1)))))
        case .multiStep(let milestones, let gamma):
            let passed = milestones.filter { epoch >= $0 }.count
            return base * pow(gamma, Float(passed))
        case .warmup(let epochs, let then):
            let done = epoch * stepsPerEpoch + step
            let total = epochs * stepsPerEpoch
            if done < total { return base * Float(done + 1) / Float(total) }
            return then.rate(base: base, epoch: epoch, step: step, stepsPerEpoch: stepsPerEpoch)
        }
    }
}
