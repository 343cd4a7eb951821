import Kernels
import Autograd

/// The residual block of ResNet-18/34: two 3x3 convolutions (`expansion` 1).
public final class BasicBlock: Layer {
    public static let expansion = 1
    public let conv1: Conv2d, bn1: BatchNorm, conv2: Conv2d, bn2: BatchNorm
    public let downsample: Sequential?
    public var isTraining = true
    /// Whether ReLUs run inside the batch norm and the residual add (one pass less each way).
    public var fused = true { didSet { bn1.fusedReLU = fused } }

    public init<G: RandomNumberGenerator>(inputChannels: Int, channels: Int, stride: Int, downsample: Sequential?, using rng: inout G) {
        conv1 = Conv2d(inputChannels: inputChannels, outputChannels: channels, kernelSize: 3, stride: stride, padding: 1, using: &rng)
        bn1 = BatchNorm(features: channels, fusedReLU: true)
        conv2 = Conv2d(inputChannels: channels, outputChannels: channels, kernelSize: 3, stride: 1, padding: 1, using: &rng)
        bn2 = BatchNorm(features: channels)
        self.downsample = downsample
    }

    public var children: [(String, any Module)] {
        [("conv1", conv1), ("bn1", bn1), ("conv2", conv2), ("bn2", bn2)] + (downsample.map { [("downsample", $0)] } ?? [])
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        guard fused else {
            return relu(add(bn2(conv2(relu(bn1(conv1(x))))), downsample?(x) ?? x))
        }
        let out = bn2(conv2(bn1(conv1(x))))           // bn1 applies its ReLU in the same pass
        return add(out, downsample?(x) ?? x, thenReLU: true)
    }
}

/// The residual block of ResNet-50: 1x1 reduce, 3x3 (stride here, as torchvision v1.5), 1x1 expand.
public final class Bottleneck: Layer {
    public static let expansion = 4
    public let conv1: Conv2d, bn1: BatchNorm, conv2: Conv2d, bn2: BatchNorm, conv3: Conv2d, bn3: BatchNorm
    public let downsample: Sequential?
    public var isTraining = true
    /// Whether ReLUs run inside the batch norms and the residual add.
    public var fused = true { didSet { bn1.fusedReLU = fused; bn2.fusedReLU = fused } }

    public init<G: RandomNumberGenerator>(inputChannels: Int, channels: Int, stride: Int, downsample: Sequential?, using rng: inout G) {
        conv1 = Conv2d(inputChannels: inputChannels, outputChannels: channels, kernelSize: 1, using: &rng)
        bn1 = BatchNorm(features: channels, fusedReLU: true)
        conv2 = Conv2d(inputChannels: channels, outputChannels: channels, kernelSize: 3, stride: stride, padding: 1, using: &rng)
        bn2 = BatchNorm(features: channels, fusedReLU: true)
        conv3 = Conv2d(inputChannels: channels, outputChannels: channels * Self.expansion, kernelSize: 1, using: &rng)
        bn3 = BatchNorm(features: channels * Self.expansion)
        self.downsample = downsample
    }

    public var children: [(String, any Module)] {
        [("conv1", conv1), ("bn1", bn1), ("conv2", conv2), ("bn2", bn2), ("conv3", conv3), ("bn3", bn3)]
            + (downsample.map { [("downsample", $0)] } ?? [])
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        guard fused else {
            return relu(add(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))), downsample?(x) ?? x))
        }
        let out = bn3(conv3(bn2(conv2(bn1(conv1(x))))))
        return add(out, downsample?(x) ?? x, thenReLU: true)
    }
}

/// Which ResNet, which stem, how wide, and what sits on top.
public struct ResNetConfig: Sendable, Hashable, Codable {
    public enum Arch: String, Sendable, Codable, CaseIterable { case resnet18, resnet34, resnet50 }
    /// `imagenet`: 7x7/2 convolution and 3x3/2 max pool; `cifar`: 3x3/1 convolution, no pool.
    public enum Stem: String, Sendable, Codable, CaseIterable { case imagenet, cifar }

    public var arch: Arch
    public var stem: Stem
    /// Base channel count (64 in the standard models); stages use width, 2x, 4x, 8x.
    public var width: Int
    public var inChannels: Int
    /// Output size of `fc`; 0 leaves the network without a classifier (features only).
    public var numClasses: Int

    public init(arch: Arch = .resnet18, stem: Stem = .imagenet, width: Int = 64, inChannels: Int = 3, numClasses: Int = 1000) {
        self.arch = arch; self.stem = stem; self.width = width; self.inChannels = inChannels; self.numClasses = numClasses
    }

    var blocks: [Int] {
        switch arch {
        case .resnet18: [2, 2, 2, 2]
        case .resnet34, .resnet50: [3, 4, 6, 3]
        }
    }
    var expansion: Int { arch == .resnet50 ? Bottleneck.expansion : BasicBlock.expansion }
    /// Width of the pooled features (`fc.in_features`).
    public var featureDimension: Int { width * 8 * expansion }
}

/// ResNet with torchvision's module names, so state dicts carry torchvision's keys.
public final class ResNet: Layer {
    public let config: ResNetConfig
    public let conv1: Conv2d
    public let bn1: BatchNorm
    public let maxpool: MaxPool2d?
    public let layer1: Sequential, layer2: Sequential, layer3: Sequential, layer4: Sequential
    /// The classifier, or any head that replaces it (MoCo's MLP head is `fc.0`, `fc.2`).
    public var fc: (any Layer)?
    public var isTraining = true

    public init<G: RandomNumberGenerator>(_ config: ResNetConfig, using rng: inout G) {
        self.config = config
        let w = config.width
        switch config.stem {
        case .imagenet:
            conv1 = Conv2d(inputChannels: config.inChannels, outputChannels: w, kernelSize: 7, stride: 2, padding: 3, using: &rng)
            maxpool = MaxPool2d(kernelSize: 3, stride: 2, padding: 1)
        case .cifar:
            conv1 = Conv2d(inputChannels: config.inChannels, outputChannels: w, kernelSize: 3, stride: 1, padding: 1, using: &rng)
            maxpool = nil
        }
        bn1 = BatchNorm(features: w, fusedReLU: true)
        var inplanes = w
        func stage(_ planes: Int, _ count: Int, _ stride: Int) -> Sequential {
            let exp = config.expansion
            var downsample: Sequential?
            if stride != 1 || inplanes != planes * exp {
                downsample = Sequential([
                    Conv2d(inputChannels: inplanes, outputChannels: planes * exp, kernelSize: 1, stride: stride, using: &rng),
                    BatchNorm(features: planes * exp),
                ])
            }
            var blocks: [any Layer] = []
            for i in 0..<count {
                if config.arch == .resnet50 {
                    blocks.append(Bottleneck(inputChannels: inplanes, channels: planes, stride: i == 0 ? stride : 1,
                                             downsample: i == 0 ? downsample : nil, using: &rng))
                } else {
                    blocks.append(BasicBlock(inputChannels: inplanes, channels: planes, stride: i == 0 ? stride : 1,
                                             downsample: i == 0 ? downsample : nil, using: &rng))
                }
                inplanes = planes * exp
            }
            return Sequential(blocks)
        }
        let b = config.blocks
        layer1 = stage(w, b[0], 1)
        layer2 = stage(w * 2, b[1], 2)
        layer3 = stage(w * 4, b[2], 2)
        layer4 = stage(w * 8, b[3], 2)
        fc = config.numClasses > 0
            ? Linear(inputFeatures: config.featureDimension, outputFeatures: config.numClasses, using: &rng) : nil
        // torchvision: Kaiming normal (fan_out, ReLU gain) for every convolution; BN weight 1, bias 0.
        for m in modules() {
            if let c = m as? Conv2d {
                let fanOut = Float(c.weight.shape[0] * c.weight.shape[2] * c.weight.shape[3])
                c.weight.assign(Tensor.randn(c.weight.shape, std: (2 / fanOut).squareRoot(), using: &rng))
            }
        }
    }

    public var children: [(String, any Module)] {
        var c: [(String, any Module)] = [("conv1", conv1), ("bn1", bn1)]
        if let maxpool { c.append(("maxpool", maxpool)) }
        c += [("layer1", layer1), ("layer2", layer2), ("layer3", layer3), ("layer4", layer4)]
        if let fc { c.append(("fc", fc)) }
        return c
    }

    /// Whether ReLUs are fused into batch norms and residual adds (the default); off runs them as
    /// separate passes, for measuring what the fusion saves.
    public var fused = true {
        didSet {
            bn1.fusedReLU = fused
            for m in modules() {
                (m as? BasicBlock)?.fused = fused
                (m as? Bottleneck)?.fused = fused
            }
        }
    }

    /// Pooled backbone features, `N x featureDimension`.
    public func features(_ x: Tensor) -> Tensor {
        var h = fused ? bn1(conv1(x)) : relu(bn1(conv1(x)))
        if let maxpool { h = maxpool(h) }
        h = layer4(layer3(layer2(layer1(h))))
        return globalAvgPool(h)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let f = features(x)
        return fc.map { $0(f) } ?? f
    }

    /// Sets the split-BN group count on every batch-norm layer (1 = ordinary BN).
    public func setBatchNormGroups(_ groups: Int) {
        for m in modules() { (m as? BatchNorm)?.groups = groups }
    }

    /// Forward FLOPs (2 x multiply-adds of convolutions and linear layers) for one image.
    public func forwardFLOPs(height: Int, width: Int) -> Double {
        var total = 0.0
        var h = height, w = width
        func conv(_ c: Conv2d) {
            let k = c.weight.shape[2]
            let oh = (h + 2 * c.padding - k) / c.stride + 1, ow = (w + 2 * c.padding - k) / c.stride + 1
            total += 2 * Double(c.weight.count) * Double(oh * ow)
            h = oh; w = ow
        }
        conv(conv1)
        if maxpool != nil { h = (h + 2 - 3) / 2 + 1; w = (w + 2 - 3) / 2 + 1 }
        for stage in [layer1, layer2, layer3, layer4] {
            for block in stage.layers {
                let (h0, w0) = (h, w)
                let convs: [Conv2d] = (block as? BasicBlock).map { [$0.conv1, $0.conv2] }
                    ?? (block as? Bottleneck).map { [$0.conv1, $0.conv2, $0.conv3] } ?? []
                for c in convs { conv(c) }
                let ds = (block as? BasicBlock)?.downsample ?? (block as? Bottleneck)?.downsample
                if let ds, let c = ds.layers.first as? Conv2d {
                    let (h1, w1) = (h, w)
                    (h, w) = (h0, w0)
                    conv(c)
                    (h, w) = (h1, w1)
                }
            }
        }
        for m in (fc?.modules() ?? []) { if let l = m as? Linear { total += 2 * Double(l.weight.count) } }
        return total
    }
}
