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
