import Foundation
import Kernels

/// Rows of an `N x D` tensor divided by their L2 norms (`max(norm, eps)`), as `F.normalize(dim=1)`.
public func l2Normalized(_ x: Tensor, epsilon: Float = 1e-12) -> Tensor {
    precondition(x.shape.count == 2, "l2Normalized wants N x D, got \(x.shape)")
    let p = x.plain()
    let n = x.shape[0], d = x.shape[1]
    let out = Tensor(uninitialized: x.shape)
    let norms = p.withUnsafeFloats { src in
        out.withUnsafeMutableFloats { dst in
            var norms = [Float](repeating: 0, count: n)
            for i in 0..<n {
                var s: Float = 0
                for j in 0..<d { let v = src[i * d + j]; s += v * v }
                norms[i] = max(s.squareRoot(), epsilon)
                for j in 0..<d { dst[i * d + j] = src[i * d + j] / norms[i] }
            }
            return norms
        }
    }
    let y = out.detached()
    return Tensor.result(shape: x.shape, desc: out.desc, buffer: out.buffer, inputs: [p]) { gy in
        let g = gy.plain()
        let gx = Tensor(uninitialized: x.shape)
        g.withUnsafeFloats { fg in
            y.withUnsafeFloats { fy in
                gx.withUnsafeMutableFloats { dst in
                    for i in 0..<n {
                        // Below eps the norm is a constant, so the map is a plain scaling.
                        let clamped = norms[i] == epsilon
                        var dot: Float = 0
                        if !clamped { for j in 0..<d { dot += fg[i * d + j] * fy[i * d + j] } }
                        for j in 0..<d { dst[i * d + j] = (fg[i * d + j] - dot * fy[i * d + j]) / norms[i] }
                    }
                }
            }
        }
        return [gx]
    }
}

/// Mean cross entropy of `logits` (`N x K`) against integer class `targets`, through a stable
/// log-softmax, as `F.cross_entropy`. Returns a scalar.
public func crossEntropy(_ logits: Tensor, targets: [Int]) -> Tensor {
    precondition(logits.shape.count == 2 && targets.count == logits.shape[0], "crossEntropy: logits \(logits.shape), \(targets.count) targets")
    let p = logits.plain()
    let n = logits.shape[0], k = logits.shape[1]
    for t in targets { precondition(t >= 0 && t < k, "target \(t) outside 0..<\(k)") }
    // Softmax probabilities, kept for the backward pass.
    let probs = Tensor(uninitialized: logits.shape)
    var total: Double = 0
    p.withUnsafeFloats { src in
        probs.withUnsafeMutableFloats { pr in
            for i in 0..<n {
                let row = src.baseAddress! + i * k
                var mx = -Float.infinity
                for j in 0..<k { mx = max(mx, row[j]) }
                var s: Float = 0
                for j in 0..<k { let e = expf(row[j] - mx); pr[i * k + j] = e; s += e }
                for j in 0..<k { pr[i * k + j] /= s }
                total += Double(logf(s) + mx - row[targets[i]])
            }
        }
    }
    let loss = Tensor(Float(total / Double(n)))
    return Tensor.result(shape: [], desc: loss.desc, buffer: loss.buffer, inputs: [p]) { gy in
        let scale = gy.item / Float(n)
        let g = Tensor(uninitialized: logits.shape)
        probs.withUnsafeFloats { pr in
            g.withUnsafeMutableFloats { dst in
                for i in 0..<n {
                    for j in 0..<k { dst[i * k + j] = pr[i * k + j] * scale }
                    dst[i * k + targets[i]] -= scale
                }
            }
        }
        return [g]
    }
}

/// The share of rows of `logits` whose largest entry is at their target (the first of equals):
/// how often the positive ranks first among the candidates. Not differentiable.
public func instanceAccuracy(_ logits: Tensor, targets: [Int]) -> Float {
    let n = logits.shape[0], width = logits.shape[1]
    let hits = logits.plain().withUnsafeFloats { l in
        var hits = 0
        for i in 0..<n {
            let row = l.baseAddress! + i * width
            var best = 0
            for j in 1..<width where row[j] > row[best] { best = j }
            if best == targets[i] { hits += 1 }
        }
        return hits
    }
    return Float(hits) / Float(max(n, 1))
}

/// SimCLR's NT-Xent (Chen, Kornblith, Norouzi, Hinton 2020, eq. 1) over the 2N views of N images:
/// `z1`, `z2` (N x D, the projections of each image's two views) are L2-normalized; each view's
/// logits are its cosine similarities to the other 2N−1 views over τ, its positive the other view
/// of the same image, the 2N−2 others its negatives; the loss is the mean cross entropy over the
/// 2N views. Also returns the instance accuracy (the positive ranked first).
public func ntXentLoss(_ z1: Tensor, _ z2: Tensor, temperature: Float) -> (loss: Tensor, instanceAccuracy: Float) {
    precondition(z1.shape == z2.shape && z1.shape.count == 2, "ntXentLoss: \(z1.shape) and \(z2.shape)")
    return ntXentLoss(concat([z1, z2], axis: 0), temperature: temperature)
}

/// NT-Xent over `z` (2N x D) whose rows `i` and `i + N` are the two views of image `i`.
public func ntXentLoss(_ stacked: Tensor, temperature: Float) -> (loss: Tensor, instanceAccuracy: Float) {
    precondition(stacked.shape.count == 2 && stacked.shape[0] % 2 == 0, "ntXentLoss: \(stacked.shape)")
    let m = stacked.shape[0], n = m / 2
    let z = l2Normalized(stacked)                                          // 2N x D
    // A view is not its own candidate: its self-similarity is pushed to -1e9, where exp is 0.
    var mask = [Float](repeating: 0, count: m * m)
    for i in 0..<m { mask[i * m + i] = -1e9 }
    let logits = add(matmul(z, z, transposeB: true) / temperature, Tensor(shape: [m, m], data: mask))
    let targets = (0..<m).map { $0 < n ? $0 + n : $0 - n }
    return (crossEntropy(logits, targets: targets), instanceAccuracy(logits, targets: targets))
}

/// MoCo v3's contrastive loss (Chen, Xie, He 2021, Algorithm 1): queries `q` (N x D) against
/// in-batch keys `k` (M x D, M ≥ N: on several ranks every rank's keys), both L2-normalized;
/// logits `q·kᵀ/τ`, query i's positive is key `i + offset` (the rank's block), and the cross
/// entropy is scaled by 2τ. Also returns the instance accuracy.
public func inBatchContrastiveLoss(_ q: Tensor, _ k: Tensor, temperature: Float, offset: Int = 0) -> (loss: Tensor, instanceAccuracy: Float) {
    precondition(q.shape.count == 2 && k.shape.count == 2 && q.shape[1] == k.shape[1] && offset + q.shape[0] <= k.shape[0],
                 "inBatchContrastiveLoss: q \(q.shape), k \(k.shape), offset \(offset)")
    let logits = matmul(l2Normalized(q), l2Normalized(k), transposeB: true) / temperature
    let targets = (0..<q.shape[0]).map { $0 + offset }
    return (crossEntropy(logits, targets: targets) * (2 * temperature), instanceAccuracy(logits, targets: targets))
}
