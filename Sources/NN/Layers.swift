import Foundation
import Kernels
import Autograd

/// 2-D convolution layer. Weights start as PyTorch's default (`kaiming_uniform_(a=√5)`); ResNet
/// re-initializes them as torchvision does.
public final class Conv2d: Layer {
    public let weight: Tensor
    public let bias: Tensor?
    public let stride: Int
    public let padding: Int
    public var isTraining = true

    public init<G: RandomNumberGenerator>(inputChannels: Int, outputChannels: Int, kernelSize: Int, stride: Int = 1,
                                          padding: Int = 0, bias: Bool = false, using rng: inout G) {
        let fanIn = Float(inputChannels * kernelSize * kernelSize)
        let bound = 1 / fanIn.squareRoot()
        weight = Tensor.uniform([outputChannels, inputChannels, kernelSize, kernelSize], low: -bound, high: bound, using: &rng, requiresGrad: true)
        self.bias = bias ? Tensor.uniform([outputChannels], low: -bound, high: bound, using: &rng, requiresGrad: true) : nil
        self.stride = stride
        self.padding = padding
    }

    public var ownState: [StateEntry] {
        [.parameter("weight", weight)] + (bias.map { [.parameter("bias", $0)] } ?? [])
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { conv2d(x, weight, bias: bias, stride: stride, padding: padding) }
}

/// Batch normalization (`BatchNorm1d`/`BatchNorm2d`): weight 1, bias 0, running mean 0, var 1.
///
/// `groups` > 1 makes it split BN (statistics over sub-batches, the single-process stand-in for
/// shuffle BN); `fusedReLU` applies a ReLU in the same oneDNN pass. Without `affine` (PyTorch's
/// `affine=False`) the scale and shift stay 1 and 0 and are neither trained nor in the state.
public final class BatchNorm: Layer {
    public let weight: Tensor
    public let bias: Tensor
    public let runningMean: Tensor
    public let runningVar: Tensor
    public var numBatchesTracked: Int64 = 0
    public let momentum: Float
    public let epsilon: Float
    public var groups: Int
    public var fusedReLU: Bool
    public var isTraining = true
    public let affine: Bool

    public init(features: Int, momentum: Float = 0.1, epsilon: Float = 1e-5, groups: Int = 1, fusedReLU: Bool = false, affine: Bool = true) {
        weight = Tensor.ones([features], requiresGrad: affine)
        bias = Tensor.zeros([features], requiresGrad: affine)
        self.affine = affine
        runningMean = Tensor.zeros([features])
        runningVar = Tensor.ones([features])
        self.momentum = momentum
        self.epsilon = epsilon
        self.groups = groups
        self.fusedReLU = fusedReLU
    }

    public var ownState: [StateEntry] {
        (affine ? [.parameter("weight", weight), .parameter("bias", bias)] : []) + [.buffer("running_mean", runningMean),
         .buffer("running_var", runningVar),
         .counter("num_batches_tracked", get: { [unowned self] in numBatchesTracked }, set: { [unowned self] in numBatchesTracked = $0 })]
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        if isTraining { numBatchesTracked += 1 }
        return batchNorm(x, weight: weight, bias: bias, runningMean: runningMean, runningVar: runningVar,
                         training: isTraining, momentum: momentum, epsilon: epsilon, groups: groups, fuseReLU: fusedReLU)
    }
}

/// Fully connected layer, `y = x·Wᵀ + b`, PyTorch's default initialization.
public final class Linear: Layer {
    public let weight: Tensor
    public let bias: Tensor?
    public var isTraining = true

    public init<G: RandomNumberGenerator>(inputFeatures: Int, outputFeatures: Int, bias: Bool = true, using rng: inout G) {
        let bound = 1 / Float(inputFeatures).squareRoot()
        weight = Tensor.uniform([outputFeatures, inputFeatures], low: -bound, high: bound, using: &rng, requiresGrad: true)
        self.bias = bias ? Tensor.uniform([outputFeatures], low: -bound, high: bound, using: &rng, requiresGrad: true) : nil
    }

    public var ownState: [StateEntry] {
        [.parameter("weight", weight)] + (bias.map { [.parameter("bias", $0)] } ?? [])
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { linear(x, weight: weight, bias: bias) }
}

public final class ReLU: Layer {
    public var isTraining = true
    public init() {}
    public func callAsFunction(_ x: Tensor) -> Tensor { relu(x) }
}

public final class MaxPool2d: Layer {
    public let kernelSize: Int, stride: Int, padding: Int
    public var isTraining = true
    public init(kernelSize: Int, stride: Int, padding: Int = 0) {
        self.kernelSize = kernelSize; self.stride = stride; self.padding = padding
    }
    public func callAsFunction(_ x: Tensor) -> Tensor { maxPool2d(x, kernel: kernelSize, stride: stride, padding: padding) }
}
