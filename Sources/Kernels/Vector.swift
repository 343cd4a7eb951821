import CDNNL
import COpenBLAS

/// GEMM through OpenBLAS, row-major.
public enum GEMM {
    /// `C = alpha * op(A) * op(B) + beta * C` with `op(A)` `m x k`, `op(B)` `k x n`, all row-major.
    public static func sgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                             a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                             beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}

/// Elementwise loops over raw float buffers (the compiler vectorizes each loop body).
public enum Vector {
    /// Calls `body` over `0..<count`. Deliberately on the calling (compute) thread: Dispatch's
    /// worker threads belong to the HTTP side, which runs them at a lower priority so that
    /// API traffic cannot slow training; these loops are memory-bound and a small share of a step.
    @inline(__always)
    public static func forEachChunk(_ count: Int, _ body: (Range<Int>) -> Void) {
        body(0..<count)
    }

    /// `dst[i] += src[i]`
    public static func accumulate(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, count: Int) {
        forEachChunk(count) { r in for i in r { dst[i] += src[i] } }
    }

    /// `dst[i] = a[i] + b[i]`
    public static func add(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, into dst: UnsafeMutablePointer<Float>, count: Int) {
        forEachChunk(count) { r in for i in r { dst[i] = a[i] + b[i] } }
    }

    /// `dst[i] = a[i] * s`
    public static func scale(_ a: UnsafePointer<Float>, by s: Float, into dst: UnsafeMutablePointer<Float>, count: Int) {
        forEachChunk(count) { r in for i in r { dst[i] = a[i] * s } }
    }

    /// `dst[i] = a[i] * b[i]`
    public static func multiply(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, into dst: UnsafeMutablePointer<Float>, count: Int) {
        forEachChunk(count) { r in for i in r { dst[i] = a[i] * b[i] } }
    }

    public static func fill(_ dst: UnsafeMutablePointer<Float>, with v: Float, count: Int) {
        forEachChunk(count) { r in for i in r { dst[i] = v } }
    }

    /// One step of PyTorch's SGD for one parameter:
    /// `d = g + wd*p; buf = first ? d : m*buf + d; p -= lr*buf` (no dampening, no Nesterov).
    public static func sgdStep(parameter p: UnsafeMutablePointer<Float>, gradient g: UnsafePointer<Float>,
                               momentumBuffer buf: UnsafeMutablePointer<Float>?, count: Int,
                               learningRate lr: Float, momentum m: Float, weightDecay wd: Float, firstStep: Bool) {
        forEachChunk(count) { r in
            if let buf {
                if firstStep {
                    for i in r { let d = g[i] + wd * p[i]; buf[i] = d; p[i] -= lr * d }
                } else {
                    for i in r { let d = g[i] + wd * p[i]; let b = m * buf[i] + d; buf[i] = b; p[i] -= lr * b }
                }
            } else {
                for i in r { p[i] -= lr * (g[i] + wd * p[i]) }
            }
        }
    }

    /// Momentum (EMA) update `k = m*k + (1-m)*q`, as MoCo's key encoder update.
    public static func ema(_ k: UnsafeMutablePointer<Float>, toward q: UnsafePointer<Float>, count: Int, momentum m: Float) {
        let a = 1 - m
        forEachChunk(count) { r in for i in r { k[i] = k[i] * m + q[i] * a } }
    }
}


/// Matrix products through oneDNN's matmul, for operand types OpenBLAS's SGEMM does not take
/// (bf16 operands, fp32 accumulation and output).
public enum MatMulKernel {
    /// `C = op(A) · op(B)`: `op(A)` `m x k`, `op(B)` `k x n`, `C` `m x n`; every matrix stored
    /// row-major with the given leading dimension, `op` transposing the stored matrix where asked.
    public static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int,
                            a: Buffer, _ aType: DataType, lda: Int, b: Buffer, _ bType: DataType, ldb: Int,
                            c: Buffer, _ cType: DataType, ldc: Int) {
        let aMD = MemoryDesc.strided([m, k], strides: transA ? [1, lda] : [lda, 1], aType)
        let bMD = MemoryDesc.strided([k, n], strides: transB ? [1, ldb] : [ldb, 1], bType)
        let cMD = MemoryDesc.strided([m, n], strides: [ldc, 1], cType)
        let p = PrimitiveCache.get(PrimitiveKey(op: "matmul", descs: [aMD, bMD, cMD], ints: [])) {
            var d = dnnl_matmul_desc_t()
            var x = aMD.raw, w = bMD.raw, y = cMD.raw
            check(dnnl_matmul_desc_init(&d, &x, &w, nil, &y), "matmul_desc_init \(m)x\(k)x\(n)")
            guard let pd = makePD(&d) else { fatalError("oneDNN has no matmul for \(m)x\(k)x\(n) \(aType)") }
            return Primitive(pd: pd)
        }
        p.execute([(.src, aMD, a.pointer), (.weights, bMD, b.pointer), (.dst, cMD, c.pointer)])
    }
}
