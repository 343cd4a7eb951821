import Autograd
import Foundation
import Data
import Kernels
import NN

/// Feature extraction and the two evaluation protocols: the weighted kNN monitor and linear
/// evaluation on a frozen backbone.
public enum Evaluation {
    /// Backbone features (after global pooling, before the head) of every image, un-augmented and
    /// normalized, in eval mode without gradients: `N x featureDimension`, row-major floats.
    /// `precision` bf16 runs the backbone under `Autocast` (the features come out as fp32).
    /// `progress` is told the images done after each batch; returning false stops the pass
    /// there (the rows not reached stay zero).
    public static func features(_ encoder: ResNet, _ ds: ImageDataset, mean: [Float], std: [Float], batch: Int = 500,
                                precision: Precision = .fp32, progress: (Int) -> Bool = { _ in true }) -> [Float] {
        let wasTraining = encoder.isTraining
        encoder.eval()
        defer { encoder.train(wasTraining) }
        let cfg = AugmentConfig(preset: .none, size: ds.height, mean: mean, std: std)
        let per = ds.channels * ds.height * ds.width
        let f = encoder.config.featureDimension
        var out = [Float](repeating: 0, count: ds.count * f)
        var rng = SeededGenerator(seed: 0)   // unused by preset none
        var start = 0
        // One scope for the whole pass: the weights do not change, so bf16 casts them once.
        Autocast.with(precision) {
            while start < ds.count {
                let n = min(batch, ds.count - start)
                let x = Tensor(uninitialized: [n, ds.channels, ds.height, ds.width])
                x.withUnsafeMutableFloats { dst in
                    for i in 0..<n { Augment.view(ds, start + i, cfg, rng: &rng, into: dst.baseAddress! + i * per) }
                }
                let y = GradMode.withNoGrad { encoder.features(x) }.toArray()
                out.replaceSubrange((start * f)..<((start + n) * f), with: y)
                start += n
                if !progress(start) { break }
            }
        }
        return out
    }

    /// Rows scaled to unit L2 norm, in place.
    public static func normalizeRows(_ v: inout [Float], dim: Int) {
        let n = v.count / dim
        v.withUnsafeMutableBufferPointer { p in
            for i in 0..<n {
                var s: Float = 0
                for j in 0..<dim { s += p[i * dim + j] * p[i * dim + j] }
                let inv = 1 / max(s.squareRoot(), 1e-12)
                for j in 0..<dim { p[i * dim + j] *= inv }
            }
        }
    }

    /// Weighted kNN (Wu et al. 2018; the MoCo CIFAR demo's `knn_predict`): cosine similarity of
    /// L2-normalized features, the `k` most similar bank entries vote for their class with
    /// weight `exp(sim / t)`. Returns top-1 accuracy in percent.
    public static func knnTop1(bank: [Float], bankLabels: [Int], queries: [Float], queryLabels: [Int], dim: Int,
                               k: Int, t: Float, classes: Int) -> Double {
        let nb = bankLabels.count, nq = queryLabels.count
        let kk = min(k, nb)
        var correct = 0
        let chunk = 256
        var sims = [Float](repeating: 0, count: chunk * nb)
        var start = 0
        while start < nq {
            let m = min(chunk, nq - start)
            queries.withUnsafeBufferPointer { q in bank.withUnsafeBufferPointer { b in sims.withUnsafeMutableBufferPointer { s in
                GEMM.sgemm(transA: false, transB: true, m: m, n: nb, k: dim, a: q.baseAddress! + start * dim, lda: dim,
                           b: b.baseAddress!, ldb: dim, c: s.baseAddress!, ldc: nb)
            } } }
            for r in 0..<m {
                let top = topK(sims, offset: r * nb, count: nb, k: kk)
                var votes = [Double](repeating: 0, count: classes)
                for (sim, idx) in top { votes[bankLabels[idx]] += Double(expf(sim / t)) }
                var best = 0
                for c in 1..<classes where votes[c] > votes[best] { best = c }
                if best == queryLabels[start + r] { correct += 1 }
            }
            start += m
        }
        return 100 * Double(correct) / Double(max(nq, 1))
    }

    /// The `k` largest values of `v[offset..<offset+count]` with their indices (a bounded min-heap).
    static func topK(_ v: [Float], offset: Int, count: Int, k: Int) -> [(Float, Int)] {
        var heap: [(Float, Int)] = []
        heap.reserveCapacity(k)
        func siftDown(_ i0: Int) {
            var i = i0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < heap.count && heap[l].0 < heap[m].0 { m = l }
                if r < heap.count && heap[r].0 < heap[m].0 { m = r }
                if m == i { return }
                heap.swapAt(i, m); i = m
            }
        }
        v.withUnsafeBufferPointer { p in
            for j in 0..<count {
                let x = p[offset + j]
                if heap.count < k {
                    heap.append((x, j))
                    var i = heap.count - 1
                    while i > 0 && heap[(i - 1) / 2].0 > heap[i].0 { heap.swapAt(i, (i - 1) / 2); i = (i - 1) / 2 }
                } else if x > heap[0].0 {
                    heap[0] = (x, j)
                    siftDown(0)
                }
            }
        }
        return heap
    }

    /// kNN of a backbone: features of the (un-augmented) training split as the bank, of the
    /// evaluation split as queries.
    public static func knn(_ encoder: ResNet, train: ImageDataset, eval: ImageDataset, mean: [Float], std: [Float],
                           k: Int, t: Float, precision: Precision = .fp32) -> Double {
        let dim = encoder.config.featureDimension
        var bank = features(encoder, train, mean: mean, std: std, precision: precision)
        var queries = features(encoder, eval, mean: mean, std: std, precision: precision)
        normalizeRows(&bank, dim: dim)
        normalizeRows(&queries, dim: dim)
        let classes = max(train.labels!.max() ?? 0, eval.labels!.max() ?? 0) + 1
        return knnTop1(bank: bank, bankLabels: train.labels!, queries: queries, queryLabels: eval.labels!, dim: dim, k: k, t: t, classes: classes)
    }

    /// The same kNN on raw pixels (normalized, then L2-normalized): the baseline a representation must beat.
    public static func rawPixelKNN(train: ImageDataset, eval: ImageDataset, mean: [Float], std: [Float], k: Int, t: Float) -> Double {
        func pixels(_ ds: ImageDataset) -> [Float] {
            let cfg = AugmentConfig(preset: .none, size: ds.height, mean: mean, std: std)
            var rng = SeededGenerator(seed: 0)
            var out = [Float](repeating: 0, count: ds.count * ds.imageBytes)
            out.withUnsafeMutableBufferPointer { p in
                for i in 0..<ds.count { Augment.view(ds, i, cfg, rng: &rng, into: p.baseAddress! + i * ds.imageBytes) }
            }
            return out
        }
        let dim = train.imageBytes
        var bank = pixels(train), queries = pixels(eval)
        normalizeRows(&bank, dim: dim)
        normalizeRows(&queries, dim: dim)
        let classes = max(train.labels!.max() ?? 0, eval.labels!.max() ?? 0) + 1
        return knnTop1(bank: bank, bankLabels: train.labels!, queries: queries, queryLabels: eval.labels!, dim: dim, k: k, t: t, classes: classes)
    }

    public struct LinearResult: Sendable {
        public var top1: Double
        public var top5: Double
    }

    /// Linear evaluation: the backbone frozen in eval mode, a linear classifier on its features
    /// (standardized with the training split's statistics) trained by SGD with momentum 0.9 and
    /// a cosine schedule; top-1/top-5 in percent on the evaluation split.
    public static func linear(_ encoder: ResNet, train: ImageDataset, eval: ImageDataset, mean: [Float], std: [Float],
                              epochs: Int = 30, learningRate: Float = 0.1, batch: Int = 256, seed: UInt64 = 0,
                              precision: Precision = .fp32) -> LinearResult {
        let dim = encoder.config.featureDimension
        return linear(trainFeatures: features(encoder, train, mean: mean, std: std, precision: precision), trainLabels: train.labels!,
                      evalFeatures: features(encoder, eval, mean: mean, std: std, precision: precision), evalLabels: eval.labels!,
                      dim: dim, epochs: epochs, learningRate: learningRate, batch: batch, seed: seed)
    }

    /// Linear evaluation on features already extracted (`N x dim` rows of each split).
    public static func linear(trainFeatures: [Float], trainLabels: [Int], evalFeatures: [Float], evalLabels: [Int], dim: Int,
                              epochs: Int = 30, learningRate: Float = 0.1, batch: Int = 256, seed: UInt64 = 0) -> LinearResult {
        var trainF = trainFeatures, evalF = evalFeatures
        let evalCount = evalLabels.count
        // Standardize each feature with the training split's mean and deviation.
        let n = trainLabels.count
        for j in 0..<dim {
            var s = 0.0, s2 = 0.0
            for i in 0..<n { let x = Double(trainF[i * dim + j]); s += x; s2 += x * x }
            let m = s / Double(n), sd = max((s2 / Double(n) - m * m).squareRoot(), 1e-6)
            for i in 0..<n { trainF[i * dim + j] = Float((Double(trainF[i * dim + j]) - m) / sd) }
            for i in 0..<evalCount { evalF[i * dim + j] = Float((Double(evalF[i * dim + j]) - m) / sd) }
        }
        let classes = max(trainLabels.max() ?? 0, evalLabels.max() ?? 0) + 1
        var rng = SeededGenerator(seed: seed)
        let layer = Linear(inputFeatures: dim, outputFeatures: classes, using: &rng)
        let opt = SGD(parameters: layer.parameters(), learningRate: learningRate, momentum: 0.9, weightDecay: 0)
        let schedule = LearningRateSchedule.cosine(epochs: epochs, perStep: true)
        let steps = max(n / batch, 1), bs = min(batch, n)
        for epoch in 0..<epochs {
            var order = Array(0..<n)
            order.fisherYatesShuffle(using: &rng)
            for s in 0..<steps {
                opt.learningRate = schedule.rate(base: learningRate, epoch: epoch, step: s, stepsPerEpoch: steps)
                let idx = order[(s * bs)..<((s + 1) * bs)]
                let x = Tensor(uninitialized: [bs, dim])
                // The pointers are used only inside the closures that lend them.
                trainF.withUnsafeBufferPointer { src in
                    x.withUnsafeMutableFloats { dst in
                        for (r, i) in idx.enumerated() { (dst.baseAddress! + r * dim).update(from: src.baseAddress! + i * dim, count: dim) }
                    }
                }
                let loss = crossEntropy(layer(x), targets: idx.map { trainLabels[$0] })
                opt.zeroGrad()
                loss.backward()
                opt.step()
            }
        }
        let logits = GradMode.withNoGrad { layer(Tensor(shape: [evalCount, dim], data: evalF)) }.toArray()
        var top1 = 0, top5 = 0
        for i in 0..<evalCount {
            let row = Array(logits[(i * classes)..<((i + 1) * classes)])
            let ranked = row.indices.sorted { row[$0] > row[$1] }
            if ranked[0] == evalLabels[i] { top1 += 1 }
            if ranked.prefix(5).contains(evalLabels[i]) { top5 += 1 }
        }
        return LinearResult(top1: 100 * Double(top1) / Double(evalCount), top5: 100 * Double(top5) / Double(evalCount))
    }
}
