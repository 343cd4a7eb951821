import Kernels

/// `op(a) · op(b)` for row-major 2-D tensors, `op` transposing where asked (OpenBLAS SGEMM).
/// Under `Autocast` bf16 the operands (and the backward's incoming gradient) are cast to bf16
/// and the products run on oneDNN with fp32 accumulation; output and gradients are fp32.
public func matmul(_ a: Tensor, _ b: Tensor, transposeA: Bool = false, transposeB: Bool = false) -> Tensor {
    precondition(a.shape.count == 2 && b.shape.count == 2, "matmul wants 2-D tensors, got \(a.shape), \(b.shape)")
    let m = transposeA ? a.shape[1] : a.shape[0], k = transposeA ? a.shape[0] : a.shape[1]
    let kb = transposeB ? b.shape[1] : b.shape[0], n = transposeB ? b.shape[0] : b.shape[1]
    precondition(k == kb, "matmul: inner dimensions \(k) and \(kb) differ")
    let type = Autocast.computeType
    let pa = a.plain(), pb = b.plain()
    // The operands as the products read them: the fp32 tensors themselves, or bf16 copies.
    let ca = pa.cast(to: type), cb = pb.cast(to: type)
    let out = Tensor(uninitialized: [m, n])
    sgemm(transA: transposeA, transB: transposeB, m: m, n: n, k: k, a: ca, lda: a.shape[1], b: cb, ldb: b.shape[1], c: out, ldc: n)
    return Tensor.result(shape: [m, n], desc: out.desc, buffer: out.buffer, inputs: [pa, pb]) { gy in
        let g = gy.plain().cast(to: type)
        let (wantsA, wantsB) = (pa.requiresGrad, pb.requiresGrad)
        let (pa, pb) = (ca, cb)
        var ga: Tensor?, gb: Tensor?
        if wantsA {
            // d op(A) = G · op(B)ᵀ; stored A is op(A) or its transpose.
            let t = Tensor(uninitialized: a.shape)
            if !transposeA {
                sgemm(transA: false, transB: !transposeB, m: m, n: k, k: n, a: g, lda: n, b: pb, ldb: b.shape[1], c: t, ldc: k)
            } else {
                sgemm(transA: transposeB, transB: true, m: k, n: m, k: n, a: pb, lda: b.shape[1], b: g, ldb: n, c: t, ldc: m)
            }
            ga = t
        }
        if wantsB {
            // d op(B) = op(A)ᵀ · G.
            let t = Tensor(uninitialized: b.shape)
            if !transposeB {
                sgemm(transA: !transposeA, transB: false, m: k, n: n, k: m, a: pa, lda: a.shape[1], b: g, ldb: n, c: t, ldc: n)
            } else {
                sgemm(transA: true, transB: transposeA, m: n, n: k, k: m, a: g, lda: n, b: pa, ldb: a.shape[1], c: t, ldc: k)
            }
            gb = t
        }
        return [ga, gb]
    }
}

/// `GEMM.sgemm` on the storage of three row-major tensors, lent only for the call; with bf16
/// operands, oneDNN's matmul (fp32 accumulation, fp32 `c`).
private func sgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, a: Tensor, lda: Int, b: Tensor, ldb: Int, c: Tensor, ldc: Int) {
    if a.dataType != .f32 || b.dataType != .f32 {
        MatMulKernel.gemm(transA: transA, transB: transB, m: m, n: n, k: k, a: a.buffer, a.dataType, lda: lda,
                          b: b.buffer, b.dataType, ldb: ldb, c: c.buffer, c.dataType, ldc: ldc)
        return
    }
    a.withUnsafeFloats { fa in
        b.withUnsafeFloats { fb in
            c.withUnsafeMutableFloats { fc in
                GEMM.sgemm(transA: transA, transB: transB, m: m, n: n, k: k, a: fa.baseAddress!, lda: lda,
                           b: fb.baseAddress!, ldb: ldb, c: fc.baseAddress!, ldc: ldc)
            }
        }
    }
}

/// `x · weightᵀ + bias` with `x` `N x in`, `weight` `out x in` (PyTorch's layout), `bias` `out`.
public func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
    let y = matmul(x, weight, transposeB: true)
    guard let bias else { return y }
    return addRowVector(y, bias)
}

/// `x + v` broadcast over the rows of an `N x D` tensor.
public func addRowVector(_ x: Tensor, _ v: Tensor) -> Tensor {
    precondition(x.shape.count == 2 && v.shape == [x.shape[1]], "addRowVector: \(x.shape) + \(v.shape)")
    let px = x.plain()
    let n = x.shape[0], d = x.shape[1]
    let out = Tensor(uninitialized: x.shape)
    px.withUnsafeFloats { fx in
        v.withUnsafeFloats { fv in
            out.withUnsafeMutableFloats { dst in for i in 0..<n { for j in 0..<d { dst[i * d + j] = fx[i * d + j] + fv[j] } } }
        }
    }
    return Tensor.result(shape: x.shape, desc: out.desc, buffer: out.buffer, inputs: [px, v]) { gy in
        let g = gy.plain()
        let gv = Tensor.zeros([d])
        g.withUnsafeFloats { fg in
            gv.withUnsafeMutableFloats { dst in for i in 0..<n { for j in 0..<d { dst[j] += fg[i * d + j] } } }
        }
        return [g, gv]
    }
}
