import Kernels

extension Tensor {
    /// The same values in row-major layout (a no-op when already plain); differentiable.
    public func plain() -> Tensor { converted(to: Tensor.plainDesc(shape)) }

    /// The same values in layout `target`; differentiable (the gradient goes back to this layout).
    public func converted(to target: MemoryDesc) -> Tensor {
        if target == desc { return self }
        let r = reorderedRaw(to: target)
        let source = desc
        return Tensor.result(shape: shape, desc: target, buffer: r.buffer, inputs: [self]) { gy in
            [gy.reorderedRaw(to: source)]
        }
    }

    /// A row-major view with another shape of the same count (`-1` infers one dimension).
    public func reshaped(_ newShape: [Int]) -> Tensor {
        var s = newShape
        if let i = s.firstIndex(of: -1) {
            let known = s.enumerated().filter { $0.offset != i }.map(\.element).reduce(1, *)
            s[i] = count / max(known, 1)
        }
        precondition(s.reduce(1, *) == count, "cannot reshape \(shape) to \(newShape)")
        let p = plain()
        let old = shape
        return Tensor.result(shape: s, desc: Tensor.plainDesc(s), buffer: p.buffer, inputs: [p]) { gy in
            [gy.plain().reshaped(old).detached()]
        }
    }

    /// `N x (everything else)`.
    public func flattened() -> Tensor { reshaped([shape[0], -1]) }
}

/// Concatenation of row-major tensors along `axis` (all other dimensions equal).
public func concat(_ parts: [Tensor], axis: Int = 0) -> Tensor {
    precondition(!parts.isEmpty)
    let rank = parts[0].shape.count
    for p in parts {
        precondition(p.shape.count == rank && (0..<rank).allSatisfy { $0 == axis || p.shape[$0] == parts[0].shape[$0] },
                     "concat: shapes \(parts.map(\.shape)) differ off axis \(axis)")
    }
    let plains = parts.map { $0.plain() }
    var shape = parts[0].shape
    shape[axis] = parts.reduce(0) { $0 + $1.shape[axis] }
    let outer = shape[..<axis].reduce(1, *)
    let inner = shape[(axis + 1)...].reduce(1, *)
    let out = Tensor(uninitialized: shape)
    let rowOut = shape[axis] * inner
    var offset = 0
    for p in plains {
        let rowIn = p.shape[axis] * inner
        p.withUnsafeFloats { src in
            out.withUnsafeMutableFloats { dst in
                for o in 0..<outer { (dst.baseAddress! + o * rowOut + offset).update(from: src.baseAddress! + o * rowIn, count: rowIn) }
            }
        }
        offset += rowIn
    }
    return Tensor.result(shape: shape, desc: out.desc, buffer: out.buffer, inputs: plains) { gy in
        let g = gy.plain()
        var offset = 0
        return plains.map { p in
            let rowIn = p.shape[axis] * inner
            let gp = Tensor(uninitialized: p.shape)
            g.withUnsafeFloats { src in
                gp.withUnsafeMutableFloats { dst in
                    for o in 0..<outer { (dst.baseAddress! + o * rowIn).update(from: src.baseAddress! + o * rowOut + offset, count: rowIn) }
                }
            }
            offset += rowIn
            return gp
        }
    }
}

/// Rows of `x` along the first axis in the order `index` (a permutation, or any selection).
public func gatherRows(_ x: Tensor, _ index: [Int]) -> Tensor {
    let p = x.plain()
    let n = p.shape.first ?? 0
    let row = p.count / max(n, 1)
    var shape = p.shape
    shape[0] = index.count
    let out = Tensor(uninitialized: shape)
    p.withUnsafeFloats { src in
        out.withUnsafeMutableFloats { dst in
            for (i, j) in index.enumerated() {
                precondition(j >= 0 && j < n, "gatherRows: index \(j) outside 0..<\(n)")
                (dst.baseAddress! + i * row).update(from: src.baseAddress! + j * row, count: row)
            }
        }
    }
    return Tensor.result(shape: shape, desc: out.desc, buffer: out.buffer, inputs: [p]) { gy in
        // Scatter-add: a row picked twice receives both gradients.
        let g = gy.plain()
        let gx = Tensor.zeros(p.shape)
        g.withUnsafeFloats { src in
            gx.withUnsafeMutableFloats { dst in
                for (i, j) in index.enumerated() { Vector.accumulate(dst.baseAddress! + j * row, src.baseAddress! + i * row, count: row) }
            }
        }
        return [gx]
    }
}
