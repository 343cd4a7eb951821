import Foundation
import Kernels
import Testing

/// Kernels against naive loops on seeded random shapes.
@Suite(.serialized) struct KernelsTests {
    struct LCG {
        var s: UInt64
        mutating func next() -> Float {
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: s >> 11) % 2001 - 1000) / 1000
        }
    }

    @Test(arguments: [(7, 5, 3), (64, 33, 17), (1, 128, 256), (130, 1, 9)])
    func sgemmMatchesNaiveLoops(m: Int, n: Int, k: Int) {
        var rng = LCG(s: UInt64(m * 1000 + n * 10 + k))
        for ta in [false, true] {
            for tb in [false, true] {
                let a = (0..<(m * k)).map { _ in rng.next() }, b = (0..<(k * n)).map { _ in rng.next() }
                var c = [Float](repeating: 0, count: m * n)
                let lda = ta ? m : k, ldb = tb ? k : n
                a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in c.withUnsafeMutableBufferPointer { pc in
                    GEMM.sgemm(transA: ta, transB: tb, m: m, n: n, k: k, a: pa.baseAddress!, lda: lda, b: pb.baseAddress!, ldb: ldb,
                               c: pc.baseAddress!, ldc: n)
                } } }
                var worst: Float = 0
                for i in 0..<m {
                    for j in 0..<n {
                        var s: Float = 0
                        for p in 0..<k { s += (ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]) }
                        worst = max(worst, abs(s - c[i * n + j]))
                    }
                }
                #expect(worst < 1e-4 * Float(k), "m\(m) n\(n) k\(k) ta \(ta) tb \(tb): max error \(worst)")
            }
        }
    }

    @Test func reorderRoundTripThroughBlockedLayout() {
        let dims = [2, 20, 5, 3]
        let plain = MemoryDesc.plain(dims)
        // A convolution picks a blocked layout for 20 channels; reorder into it and back.
        let conv = Convolution.forward(ConvShape(batch: 2, inChannels: 20, height: 5, width: 3, outChannels: 20, kernel: 3,
                                                 stride: 1, padding: 1, hasBias: false), src: plain, training: true)
        let blocked = conv.md(.src)
        #expect(blocked != plain, "expected oneDNN to choose its own layout, got \(blocked.layoutName)")
        #expect(!conv.implementation.hasPrefix("ref"), "convolution runs the reference kernel: \(conv.implementation)")
        let n = dims.reduce(1, *)
        let src = Buffer(byteCount: n * 4), mid = Buffer(byteCount: blocked.byteCount), back = Buffer(byteCount: n * 4)
        src.withUnsafeMutableFloats { for i in 0..<n { $0[i] = Float(i) } }
        ElementwiseKernel.reorder(src.pointer, from: plain, into: mid.pointer, to: blocked)
        ElementwiseKernel.reorder(mid.pointer, from: blocked, into: back.pointer, to: plain)
        #expect(back.withUnsafeFloats { f in (0..<n).allSatisfy { f[$0] == Float($0) } })
    }

    @Test func sgdAndEMAMatchNaiveLoops() {
        let n = 200_003   // above the threshold that splits work across threads
        var rng = LCG(s: 3)
        var p = (0..<n).map { _ in rng.next() }, g = (0..<n).map { _ in rng.next() }, buf = (0..<n).map { _ in rng.next() }
        var (p2, buf2) = (p, buf)
        let (lr, m, wd): (Float, Float, Float) = (0.1, 0.9, 1e-4)
        for i in 0..<n { let d = g[i] + wd * p2[i]; buf2[i] = m * buf2[i] + d; p2[i] -= lr * buf2[i] }
        p.withUnsafeMutableBufferPointer { pp in g.withUnsafeBufferPointer { pg in buf.withUnsafeMutableBufferPointer { pb in
            Vector.sgdStep(parameter: pp.baseAddress!, gradient: pg.baseAddress!, momentumBuffer: pb.baseAddress!, count: n,
                           learningRate: lr, momentum: m, weightDecay: wd, firstStep: false)
        } } }
        #expect(p == p2 && buf == buf2)
        var k = (0..<n).map { _ in rng.next() }
        let q = (0..<n).map { _ in rng.next() }
        let expected = zip(k, q).map { $0 * 0.99 + $1 * (1 - 0.99) }
        k.withUnsafeMutableBufferPointer { pk in q.withUnsafeBufferPointer { pq in Vector.ema(pk.baseAddress!, toward: pq.baseAddress!, count: n, momentum: 0.99) } }
        #expect(k == expected)
    }

    @Test func bufferPoolReusesReleasedBlocks() {
        let size = 123_456
        do { _ = Buffer(byteCount: size) }
        let before = BufferPool.stats
        do { _ = Buffer(byteCount: size) }
        let after = BufferPool.stats
        #expect(after.allocations == before.allocations)
        #expect(after.reuses == before.reuses + 1)
    }

    /// The programs re-exec themselves so OpenBLAS loads its AVX-512 kernel; in this (test) process
    /// the environment decides, so this checks only that the core is reported and GEMM is usable.
    @Test func runtimeReportsKernels() {
        #expect(!Runtime.openBLASCore.isEmpty)
        #expect(!Runtime.dnnlISA.isEmpty)
        // This machine's report agrees with oneDNN's dispatcher.
        let here = Runtime.bf16
        #expect(here.onednn_amx == (Runtime.dnnlISA == "avx512_core_amx"))
        #expect(!here.onednn_bf16 || here.avx512_bf16 || here.amx_bf16)
    }

    /// bf16 support read from cpuinfo flags and oneDNN's ISA: AMX needs both tile flags, and
    /// oneDNN's answer is its own (a CPU with AMX where oneDNN leaves it off says so).
    @Test(arguments: [
        ("flags\t: fpu avx512f avx512_bf16 avx512_vnni", "avx512_core_bf16",
         Runtime.BF16Support(avx512_bf16: true, amx_bf16: false, onednn_bf16: true, onednn_amx: false)),
        ("flags\t: avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", "avx512_core_amx",
         Runtime.BF16Support(avx512_bf16: true, amx_bf16: true, onednn_bf16: true, onednn_amx: true)),
        ("flags\t: avx512f avx512_bf16 amx_bf16 amx_tile", "avx512_core_bf16",
         Runtime.BF16Support(avx512_bf16: true, amx_bf16: true, onednn_bf16: true, onednn_amx: false)),
        ("flags\t: avx512f amx_bf16", "avx512_core",
         Runtime.BF16Support(avx512_bf16: false, amx_bf16: false, onednn_bf16: false, onednn_amx: false)),
        ("processor\t: 0\nflags\t: avx2 fma", "avx2",
         Runtime.BF16Support(avx512_bf16: false, amx_bf16: false, onednn_bf16: false, onednn_amx: false)),
        ("", "other(0)", Runtime.BF16Support(avx512_bf16: false, amx_bf16: false, onednn_bf16: false, onednn_amx: false)),
    ] as [(String, String, Runtime.BF16Support)])
    func bf16Support(_ cpuinfo: String, _ isa: String, _ expected: Runtime.BF16Support) {
        #expect(Runtime.BF16Support.from(cpuinfo: cpuinfo, onednnISA: isa) == expected)
        // The tile-data permission counts only where the CPU has AMX.
        var granted = expected
        granted.amx_permission = expected.amx_bf16
        #expect(Runtime.BF16Support.from(cpuinfo: cpuinfo, onednnISA: isa, amxPermission: true) == granted)
    }

    /// The AMX tile-data permission is requested before oneDNN looks at the CPU. Without AMX
    /// Linux refuses it; with AMX it must be granted, or oneDNN would fall back to AVX-512.
    @Test func amxPermissionFollowsTheCPU() {
        let here = Runtime.bf16
        #expect(here.amx_permission == (here.amx_bf16 && Runtime.amxTilePermission))
        if here.amx_bf16 {
            #expect(Runtime.amxTilePermission, "the CPU has AMX but Linux did not grant tile data")
            #expect(here.onednn_amx, "AMX permitted but oneDNN dispatches \(Runtime.dnnlISA)")
        } else {
            #expect(!Runtime.amxTilePermission)
        }
    }
}

/// The executables re-exec themselves so that OpenBLAS loads its AVX-512 kernel even when the
/// environment names a slower one (or none).
@Suite struct OpenBLASCoreTests {
    @Test func benchmarkRunsTheFastKernel() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let exe = root.appendingPathComponent(".build/debug/mocobench")
        try #require(FileManager.default.isExecutableFile(atPath: exe.path), "build mocobench first (swift build)")
        for env in [["OPENBLAS_CORETYPE": "Prescott"], ["OPENBLAS_CORETYPE": "Haswell"], [:]] {
            let p = Process()
            p.executableURL = exe
            p.arguments = ["info"]
            var e = ProcessInfo.processInfo.environment
            e["OPENBLAS_CORETYPE"] = nil
            e["MOCOD_REEXECED"] = nil
            e["MOCOD_KEEP_OPENBLAS_CORE"] = nil
            e.merge(env) { $1 }
            p.environment = e
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            p.waitUntilExit()
            let json = try JSONSerialization.jsonObject(with: out.fileHandleForReading.readDataToEndOfFile()) as! [String: Any]
            #expect(json["openblas_fast"] as? Bool == true, "env \(env): \(json)")
            // fp32 sums of 129 products: relative to the sum of magnitudes, error stays near 1e-7.
            #expect((json["gemm_max_relative_error"] as? Double ?? 1) < 1e-5, "env \(env): \(json)")
        }
    }
}
