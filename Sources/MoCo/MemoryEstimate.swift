import Foundation
import NN

/// The peak resident memory a training job is expected to reach, term by term (bytes): what the
/// dry run reports and admission checks against the machine. Calibrated against measured peak
/// RSS (`bench/memory_estimate.sh`, the table in the README): each term is counted as the code
/// holds it, not as a bound.
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
    /// Training steps and evaluations take turns: the peak is the larger of the two on top of the rest.
    public var total: Int { runtime + data + model + max(activations, evaluation) }

    /// The process's fixed cost, measured: a job on the smallest model.
    public static let runtimeBytes = 160 << 20
    /// Activations the tape keeps per basic block, in units of the block's output map (conv, batch
    /// norm and ReLU twice, the sum): the backward pass needs each. Bottlenecks keep about 22 maps
    /// of their narrow width.
    static let basicBlockMaps = 7.0
    static let bottleneckMaps = 22.0
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
        var perImage = c.stem == .cifar ? 3 * w * size * size
                                        : 3 * w * pow((size / 2).rounded(.up), 2) + w * side * side   // conv, bn, relu at 1/2; the pool
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
        // Copies: weights, gradients, momentum (LARS and SGD both keep one), and a momentum
        // encoder's weights for every method but SimCLR; the checkpoint being written holds one more.
        let copies: Double = method == .simclr ? 4 : 5
        let queue = Double((moco?.queue ?? 0) * model.dim)
        let modelBytes = 4 * (trained * copies + queue)
        // Data: in-memory images as bytes, train and eval; streamed: the cache. Prefetched batches
        // (two views, floats) for 2 loader workers, two deep.
        func images(_ s: DataSource, count: Double) -> Double {
            s.isStreamed ? Double(s.cacheBytes) : count * channels * pow(Double(Self.nativeSide(s.format)), 2)
        }
        let trainCount = Double(data.limit ?? Self.typicalCount(data.format, split: data.split))
        let evalCount = eval.map { Double($0.source.limit ?? Self.typicalCount($0.source.format, split: $0.source.split)) } ?? 0
        let prefetch = 4 * 2 * batch * channels * size * size * 4
        let dataBytes = images(data, count: trainCount) + (eval.map { images($0.source, count: evalCount) } ?? 0) + prefetch
        // kNN: bank and queries (features, floats), and a 256-query similarity block over the bank.
        let feature = Double(c.featureDimension)
        let evaluation = eval == nil ? 0 : 4 * (trainCount * feature + evalCount * feature + 256 * trainCount)
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
