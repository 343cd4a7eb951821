import Foundation
import NN

/// The peak resident memory a training job is expected to reach, term by term (bytes): what the
/// dry run reports and admission checks against the machine. Calibrated against measured peak RSS
/// (`bench/memory_estimate.sh`; the table is in the README). The terms add up rather than take
/// turns: the tensor buffer pool keeps a training step's buffers while the evaluation pass, at
/// another batch size, allocates its own.
public struct MemoryEstimate: Sendable, Equatable, Codable {
    /// The process before any job data: the Swift runtime, oneDNN's and OpenBLAS's code and
    /// buffers, thread stacks.
    public var runtime: Int
    /// The datasets held in memory (in-memory formats: every image as bytes; streamed formats:
    /// the decoded-image cache) and the loader's prefetched batches.
    public var data: Int
    /// Parameters of every network, their gradients and the optimizer's state, the queue.
    public var model: Int
    /// What one training step holds at its peak: the activations kept for the backward pass.
    public var activations: Int
    /// The kNN monitor's feature bank, queries and similarity block.
    public var evaluation: Int
    public var total: Int { runtime + data + model + activations + evaluation }

    /// The process's fixed cost (the intercept of the fit over the measured matrix).
    public static let runtimeBytes = 64 << 20
    /// Maps one image keeps per basic block, in units of the block's output map (a convolution,
    /// batch norm and ReLU twice, and the sum make 7; fused ops keep fewer: 5.6 fits the measured
    /// slope in the batch size). Bottlenecks: about 22 maps of their narrow width, scaled alike.
    static let basicBlockMaps = 5.6
    static let bottleneckMaps = 17.6
    /// Copies of the trained parameters held at once: weights, gradients, momentum, a momentum
    /// encoder, oneDNN's reordered weights for the forward and both backward passes, and the
    /// checkpoint being encoded (the fit's term in the square of the width).
    static let parameterCopies = 11.0
    /// The evaluation pass's activations per image at its batch of 500, as a share of a training
    /// image's (no tape, but the buffers of a whole block are live at once).
    static let evaluationShare = 0.46
}

extension JobSpec {
    /// The job's expected peak memory (see `MemoryEstimate`).
    public var memoryEstimate: MemoryEstimate {
        let c = resnetConfig
        let w = Double(c.width), size = Double(augment.size), channels = Double(model.in_channels)
        let batch = Double(optim.batch_size)
        // Floats one image's forward pass keeps for backward, stage by stage.
        let blocks = c.arch == .resnet18 ? [2.0, 2, 2, 2] : [3.0, 4, 6, 3]
        var side = c.stem == .cifar ? size : (size / 4).rounded(.up)
        let stemMaps = MemoryEstimate.basicBlockMaps * 3 / 7   // conv, batch norm, ReLU
        var perImage = c.stem == .cifar ? stemMaps * w * size * size
                                        : stemMaps * w * pow((size / 2).rounded(.up), 2) + w * side * side   // at 1/2; the pool
        for (i, n) in blocks.enumerated() {
            if i > 0 { side = (side / 2).rounded(.up) }
            let width = w * pow(2, Double(i))
            let maps = c.arch == .resnet50 ? MemoryEstimate.bottleneckMaps : MemoryEstimate.basicBlockMaps
            perImage += n * maps * width * side * side
        }
        // Views that run through the encoder with the tape on: MoCo's queries (both views when
        // symmetric); SimCLR and MoCo v3 both views.
        let tapedViews: Double = method.hasQueue ? (moco?.symmetric == true ? 2 : 1) : 2
        let activations = 4 * perImage * batch * tapedViews
        // Parameters: the backbone, the head, and for MoCo v3 the predictor.
        let backbone = Double(Self.backboneParameters(c))
        let hidden = Double(model.mlp_hidden ?? (method == .moco_v1 ? 0 : c.featureDimension))
        let head = hidden > 0 ? Double(c.featureDimension) * hidden + hidden * Double(model.dim) : Double(c.featureDimension * model.dim)
        let predictor = method == .moco_v3 ? 2 * Double(model.dim) * hidden : 0
        let trained = backbone + head + predictor
        let queue = Double((moco?.queue ?? 0) * model.dim)
        let modelBytes = 4 * (trained * MemoryEstimate.parameterCopies + queue)
        // Data: in-memory images as bytes, train and eval; streamed: the cache. Prefetched batches
        // (two views, floats) for 2 loader workers, two deep.
        func images(_ s: DataSource, count: Double) -> Double {
            s.isStreamed ? Double(s.cacheBytes) : count * channels * pow(Double(Self.nativeSide(s.format)), 2)
        }
        let trainCount = Double(data.limit ?? Self.typicalCount(data.format, split: data.split))
        let evalCount = eval.map { Double($0.source.limit ?? Self.typicalCount($0.source.format, split: $0.source.split)) } ?? 0
        let prefetch = 4 * 2 * batch * channels * size * size * 4
        let dataBytes = images(data, count: trainCount) + (eval.map { images($0.source, count: evalCount) } ?? 0) + prefetch
        // kNN: the encoder's pass over both splits at batch 500, the bank and queries (features,
        // floats), and a 256-query similarity block over the bank.
        let feature = Double(c.featureDimension)
        let pass = MemoryEstimate.evaluationShare * perImage * 500
        let evaluation = eval == nil ? 0 : 4 * (pass + trainCount * feature + evalCount * feature + 256 * trainCount)
        return MemoryEstimate(runtime: MemoryEstimate.runtimeBytes, data: Int(dataBytes), model: Int(modelBytes),
                              activations: Int(activations), evaluation: Int(evaluation))
    }

    /// Parameters (and batch-norm buffers) of a ResNet without its classifier, counted from its shape.
    static func backboneParameters(_ c: ResNetConfig) -> Int {
        let w = c.width
        var count = c.inChannels * w * (c.stem == .cifar ? 9 : 49) + 4 * w
        var inC = w
        let blocks = c.arch == .resnet18 ? [2, 2, 2, 2] : [3, 4, 6, 3]
        for (stage, n) in blocks.enumerated() {
            let mid = w << stage
            for b in 0..<n {
                let stride2 = stage > 0 && b == 0
                if c.arch == .resnet50 {
                    let out = mid * 4
                    count += inC * mid + mid * mid * 9 + mid * out + 4 * (mid + mid + out)
                    if inC != out || stride2 { count += inC * out + 4 * out }
                    inC = out
                } else {
                    count += inC * mid * 9 + mid * mid * 9 + 8 * mid
                    if inC != mid || stride2 { count += inC * mid + 4 * mid }
                    inC = mid
                }
            }
        }
        return count
    }

    /// The image side a format is stored at before views are cropped (what an in-memory dataset holds).
    static func nativeSide(_ f: DataFormat) -> Int {
        switch f {
        case .idx: 28
        case .cifar10, .cifar100: 32
        case .npy, .folder, .tar: 64   // unknown until read: a typical small image
        }
    }

    /// Images in a split when the spec gives no limit (the known datasets' sizes; others: a guess).
    static func typicalCount(_ f: DataFormat, split: String) -> Int {
        switch f {
        case .idx: split == "test" ? 10_000 : 60_000
        case .cifar10, .cifar100: split == "test" ? 10_000 : 50_000
        case .npy, .folder, .tar: 50_000
        }
    }
}
