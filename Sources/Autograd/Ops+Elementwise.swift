import Kernels

// MARK: - ReLU and residual add (oneDNN, any layout)

/// `max(x, 0)`, in `x`'s layout.
public func relu(_ x: Tensor) -> Tensor {
    let fwd = ElementwiseKernel.reluForward(x.desc)
    let out = Buffer(byteCount: x.desc.byteCount)
    fwd.execute([(.src, x.desc, x.buffer.pointer), (.dst, x.desc, out.pointer)])
    let y = Tensor(shape: x.shape, desc: x.desc, buffer: out)
    return Tensor.result(shape: x.shape, desc: x.desc, buffer: out, inputs: [x]) { gy in
        [reluBackward(output: y, gy)]
    }
}

/// `dy * (y > 0)` in `y`'s layout, from the ReLU's output `y`.
func reluBackward(output y: Tensor, _ gy: Tensor) -> Tensor {
    let dy = gy.reorderedRaw(to: y.desc)
    let dx = Buffer(byteCount: y.desc.byteCount)
    ElementwiseKernel.reluBackward(data: y.desc, diff: y.desc)
        .execute([(.dst, y.desc, y.buffer.pointer), (.diffDst, y.desc, dy.buffer.pointer), (.diffSrc, y.desc, dx.pointer)])
    return Tensor(shape: y.shape, desc: y.desc, buffer: dx)
}

/// `a + b` (same shape), in `a`'s layout; `thenReLU` fuses a ReLU into the same pass, as the
/// residual join of a ResNet block needs.
public func add(_ a: Tensor, _ b: Tensor, thenReLU: Bool = false) -> Tensor {
    precondition(a.shape == b.shape, "add: shapes \(a.shape) and \(b.shape) differ")
    let bb = b.reorderedRaw(to: a.desc)
    let out = Buffer(byteCount: a.desc.byteCount)
    ElementwiseKernel.add(a.desc, relu: thenReLU)
        .execute([(.src, a.desc, a.buffer.pointer), (.src1, a.desc, bb.buffer.pointer), (.dst, a.desc, out.pointer)])
    let y = Tensor(shape: a.shape, desc: a.desc, buffer: out)
    return Tensor.result(shape: a.shape, desc: a.desc, buffer: out, inputs: [a, b]) { gy in
        let g = thenReLU ? reluBackward(output: y, gy) : gy
        return [g.reorderedRaw(to: a.desc), g.reorderedRaw(to: b.desc)]
    }
}

public func + (a: Tensor, b: Tensor) -> Tensor { add(a, b) }
public func - (a: Tensor, b: Tensor) -> Tensor { add(a, negated(b)) }

// MARK: - Plain elementwise and reductions (Swift loops)

/// `x * s` for a constant `s`.
public func scaled(_ x: Tensor, by s: Float) -> Tensor {
    let out = Buffer(byteCount: x.desc.byteCount)
    x.withUnsafeFloats { src in
        out.withUnsafeMutableFloats { Vector.scale(src.baseAddress!, by: s, into: $0.baseAddress!, count: x.physicalCount) }
    }
    return Tensor.result(shape: x.shape, desc: x.desc, buffer: out, inputs: [x]) { gy in
        [scaled(gy.reorderedRaw(to: x.desc), by: s)]
    }
}

public func negated(_ x: Tensor) -> Tensor { scaled(x, by: -1) }
public func * (x: Tensor, s: Float) -> Tensor { scaled(x, by: s) }
public func / (x: Tensor, s: Float) -> Tensor { scaled(x, by: 1 / s) }

/// Elementwise product of two row-major tensors of the same shape.
public func multiply(_ a: Tensor, _ b: Tensor) -> Tensor {
    precondition(a.shape == b.shape, "multiply: shapes \(a.shape) and \(b.shape) differ")
    let pa = a.plain(), pb = b.plain()
    let out = Tensor(uninitialized: a.shape)
    pa.withUnsafeFloats { fa in
        pb.withUnsafeFloats { fb in
            out.withUnsafeMutableFloats { Vector.multiply(fa.baseAddress!, fb.baseAddress!, into: $0.baseAddress!, count: a.count) }
        }
    }
    return Tensor.result(shape: a.shape, desc: out.desc, buffer: out.buffer, inputs: [pa, pb]) { gy in
        let g = gy.plain()
        return [multiply(g, pb.detached()), multiply(g, pa.detached())]
    }
}

/// Sum of all elements, as a scalar.
public func sum(_ x: Tensor) -> Tensor {
    let p = x.plain()
    let s = p.withUnsafeFloats { f in
        var s: Double = 0
        for i in 0..<p.count { s += Double(f[i]) }
        return s
    }
    let out = Tensor(Float(s))
    return Tensor.result(shape: [], desc: out.desc, buffer: out.buffer, inputs: [p]) { gy in
        [Tensor.full(p.shape, gy.item)]
    }
}

/// Mean of all elements, as a scalar.
public func mean(_ x: Tensor) -> Tensor { scaled(sum(x), by: 1 / Float(max(x.count, 1))) }

/// Row sums of an `N x D` tensor: `N x 1` (keepDims), as `(q * k).sum(1, keepdim=True)`.
public func sumRows(_ x: Tensor) -> Tensor {
    precondition(x.shape.count == 2, "sumRows wants N x D, got \(x.shape)")
    let p = x.plain()
    let n = x.shape[0], d = x.shape[1]
    let out = Tensor(uninitialized: [n, 1])
    p.withUnsafeFloats { src in
        out.withUnsafeMutableFloats { dst in
            for i in 0..<n {
                var s: Float = 0
                for j in 0..<d { s += src[i * d + j] }
                dst[i] = s
            }
        }
    }
    return Tensor.result(shape: [n, 1], desc: out.desc, buffer: out.buffer, inputs: [p]) { gy in
        let g = gy.plain()
        let gx = Tensor(uninitialized: [n, d])
        g.withUnsafeFloats { src in
            gx.withUnsafeMutableFloats { dst in for i in 0..<n { for j in 0..<d { dst[i * d + j] = src[i] } } }
        }
        return [gx]
    }
}
