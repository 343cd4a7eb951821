import ArgumentParser
import Collectives
import Data
import Autograd
import Foundation
import HTTP
import Logging
import MoCo
import Kernels
import NN

@main
enum Entry {
    static func main() {
        // OpenBLAS picks its kernel when it loads: re-exec with the right one before anything else.
        Runtime.ensureFastOpenBLAS()
        MocoBench.main()
    }
}

struct MocoBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mocobench",
        abstract: "Benchmarks of the mocod compute engine; each prints one JSON line.",
        subcommands: [Step.self, GEMMBench.self, Info.self, Serve.self, CollectivesBench.self, DataParallelCheck.self, DataParallelStep.self,
                      InputBench.self],
        defaultSubcommand: Info.self)
}

func printJSON(_ object: [String: Any]) {
    let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
    fflush(nil)
}

func peakRSSMegabytes() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_maxrss) / 1024
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// The input pipeline alone: images/s of reading, decoding and augmenting a dataset (two views
/// each, aug+), by the loader's workers, no training. Prints one JSON line.
struct InputBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "input", abstract: "Images/s of decode + aug+ (two views) over a dataset, no training.")
    @Option(help: "The data object (JSON), e.g. {\"format\": \"folder\", \"path\": \"jpegs20k\", \"cache_mb\": 0}.") var data: String
    @Option(name: .customLong("data-root")) var dataRoots: [String] = []
    @Option var size = 224
    @Option var batch = 256
    @Option(help: "Batches to time (after one to warm up).") var batches = 10
    @Option var workers = 2
    @Option var channels = 3

    func run() throws {
        let source = try JSONDecoder().decode(JobSpec.DataSource.self, from: Data(data.utf8))
        let t0 = now()
        let ds = try DataSources.load(source, roots: dataRoots.isEmpty ? DataSources.defaultRoots : dataRoots, size: size, channels: channels)
        let indexSeconds = now() - t0
        let cfg = AugmentConfig(preset: .v2, size: size, mean: [Float](repeating: 0.45, count: channels), std: [Float](repeating: 0.225, count: channels))
        let loader = BatchLoader(dataset: ds, augment: cfg, batchSize: batch, views: 2, seed: 1, workers: workers)
        let stream = loader.epoch(0)
        guard stream.next() != nil else { throw ValidationError("the dataset has fewer than \(batch) images") }
        let start = now()
        var images = 0
        for _ in 0..<batches {
            guard let b = stream.next() else { break }
            images += b.indices.count
        }
        let seconds = now() - start
        printJSON(["images": images, "seconds": seconds, "images_per_second": Double(images) / seconds, "views_per_image": 2,
                   "size": size, "workers": workers, "dataset_count": ds.count, "index_seconds": indexSeconds,
                   "data_errors": ds.stream?.errorCounts.bad ?? 0, "peak_rss_mb": peakRSSMegabytes()])
    }
}

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The kernels in use on this machine.")
    func run() {
        let bf16 = Runtime.bf16
        printJSON(["openblas_core": Runtime.openBLASCore, "openblas_fast": Runtime.openBLASIsFast,
                   "onednn_isa": Runtime.dnnlISA, "max_threads": Runtime.maxThreads,
                   "cpu_avx512": Runtime.cpuHasAVX512, "gemm_max_relative_error": Self.gemmError(),
                   "bf16": ["avx512_bf16": bf16.avx512_bf16, "amx_bf16": bf16.amx_bf16,
                            "onednn_bf16": bf16.onednn_bf16, "onednn_amx": bf16.onednn_amx,
                            "amx_permission": bf16.amx_permission]])
    }

    /// Largest relative error of OpenBLAS SGEMM (every transpose combination, odd sizes) against
    /// naive double-precision loops: the kernel the process runs must compute correctly here.
    static func gemmError() -> Double {
        var rng = SeededGenerator(seed: 2)
        let (m, n, k) = (67, 45, 129)
        var worst = 0.0
        for ta in [false, true] {
            for tb in [false, true] {
                let a = Tensor.randn(ta ? [k, m] : [m, k], using: &rng), b = Tensor.randn(tb ? [n, k] : [k, n], using: &rng)
                let c = matmul(a, b, transposeA: ta, transposeB: tb).toArray()
                let av = a.toArray(), bv = b.toArray()
                for i in 0..<m {
                    for j in 0..<n {
                        var s = 0.0, mag = 0.0
                        for p in 0..<k {
                            let x = Double(ta ? av[p * m + i] : av[i * k + p]) * Double(tb ? bv[j * k + p] : bv[p * n + j])
                            s += x; mag += abs(x)
                        }
                        worst = max(worst, abs(Double(c[i * n + j]) - s) / max(mag, 1e-30))
                    }
                }
            }
        }
        return worst
    }
}

struct GEMMBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "gemm",
        abstract: "GEMM rate (2048^3): fp32 SGEMM through OpenBLAS, or bf16 operands with fp32 output through oneDNN's matmul.")
    @Option var threads = 2
    @Option var n = 2048
    @Option var seconds = 2.0
    @Option(help: "fp32 (OpenBLAS SGEMM) or bf16 (oneDNN matmul, the kernel bf16 matmuls run on).") var precision: Precision = .fp32

    func run() {
        Runtime.setThreads(threads)
        var rng = SeededGenerator(seed: 1)
        let a = Tensor.randn([n, n], using: &rng), b = Tensor.randn([n, n], using: &rng), c = Tensor.zeros([n, n])
        let (ha, hb) = precision == .bf16 ? (a.cast(to: .bf16), b.cast(to: .bf16)) : (a, b)
        func once() {
            if precision == .bf16 {
                MatMulKernel.gemm(transA: false, transB: false, m: n, n: n, k: n, a: ha.buffer, .bf16, lda: n,
                                  b: hb.buffer, .bf16, ldb: n, c: c.buffer, .f32, ldc: n)
                return
            }
            a.withUnsafeFloats { fa in
                b.withUnsafeFloats { fb in
                    c.withUnsafeMutableFloats { fc in
                        GEMM.sgemm(transA: false, transB: false, m: n, n: n, k: n, a: fa.baseAddress!, lda: n, b: fb.baseAddress!, ldb: n, c: fc.baseAddress!, ldc: n)
                    }
                }
            }
        }
        once()
        var iterations = 0
        let start = now()
        while now() - start < seconds || iterations < 3 { once(); iterations += 1 }
        let elapsed = now() - start
        printJSON(["impl": "mocod", "gemm_gflops_per_second": 2 * pow(Double(n), 3) * Double(iterations) / elapsed / 1e9,
                   "threads": threads, "n": n, "iterations": iterations, "seconds": elapsed,
                   "openblas_core": Runtime.openBLASCore, "precision": precision.rawValue, "onednn_isa": Runtime.dnnlISA])
    }
}

struct Step: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Times the trainer's MoCo v2 step (the code `moco train` runs): EMA update, query forward+backward, key forward with shuffle BN, SGD, enqueue.")
    @Option var arch: ResNetConfig.Arch = .resnet18
    @Option var stem: ResNetConfig.Stem = .cifar
    @Option var width = 64
    @Option var batch = 256
    @Option var channels = 1
    @Option var size = 28
    @Option var threads = 2
    @Option(help: "Queue length K (rounded up to a multiple of the batch).") var queue = 4096
    @Option var steps = 5
    @Option var warmup = 2
    @Option(help: "Split-BN groups (the spec's moco.bn_splits; 1 = plain BN, as the PyTorch reference).") var groups = 1
    @Flag(help: "Run ReLUs as separate passes instead of fused into batch norm and the residual add.") var noFusion = false
    @Option(help: "fp32, or bf16 mixed precision (as PyTorch's CPU autocast).") var precision: Precision = .fp32

    /// MoCo v2 as `moco train` builds it (MLP head, t 0.2, m 0.999, SGD 0.03/0.9/1e-4).
    static func mocoV2(config: ResNetConfig, queue: Int, bnSplits: Int, rng: inout SeededGenerator) -> (MoCoModel, SGD) {
        let model = MoCoModel(config: config, mlpHidden: nil, queueSize: queue, momentum: 0.999, temperature: 0.2, bnSplits: bnSplits,
                              symmetric: false, rng: &rng)
        return (model, SGD(parameters: model.encoderQ.parameters(), learningRate: 0.03, momentum: 0.9, weightDecay: 1e-4))
    }

    func run() throws {
        Runtime.setThreads(threads)
        var rng = SeededGenerator(seed: 0)
        let dim = 128
        let k = (queue + batch - 1) / batch * batch
        let config = ResNetConfig(arch: arch, stem: stem, width: width, inChannels: channels, numClasses: dim)
        // The trainer's own step: the same code path a job runs, not a copy of it.
        let (model, opt) = Self.mocoV2(config: config, queue: k, bnSplits: groups, rng: &rng)
        model.encoderQ.fused = !noFusion
        model.encoderK.fused = !noFusion
        model.precision = precision
        let encoderQ = model.encoderQ
        let xq = Tensor.randn([batch, channels, size, size], using: &rng)
        let xk = Tensor.randn([batch, channels, size, size], using: &rng)
        var shuffle = SeededGenerator(seed: 1)
        func step() -> Float { model.trainStep(xq, xk, optimizer: opt, rng: &shuffle).loss }

        for _ in 0..<warmup { _ = step() }
        let allocationsAfterWarmup = BufferPool.stats.allocations
        var times: [Double] = []
        var loss: Float = 0
        for _ in 0..<steps {
            let t0 = now()
            loss = step()
            times.append(now() - t0)
        }
        times.sort()
        let median = times[times.count / 2]
        let fwd = encoderQ.forwardFLOPs(height: size, width: size)
        let flops = Double(batch) * (3 * fwd + fwd) + 2 * Double(batch * dim * (k + 1)) * 3
        printJSON([
            "impl": "mocod", "arch": arch.rawValue, "stem": stem.rawValue, "width": width, "batch": batch,
            "channels": channels, "size": size, "threads": threads, "queue": k, "steps": steps, "warmup": warmup,
            "step_ms": median * 1e3, "images_per_second": Double(batch) / median, "peak_rss_mb": peakRSSMegabytes(),
            "gflops_per_second": flops / median / 1e9, "flops_per_step": flops, "loss": Double(loss),
            "steady_state_allocations": BufferPool.stats.allocations - allocationsAfterWarmup,
            "openblas_core": Runtime.openBLASCore, "onednn_isa": Runtime.dnnlISA, "fusion": !noFusion, "groups": groups,
            "precision": precision.rawValue,
        ])
    }
}

extension ResNetConfig.Arch: ExpressibleByArgument {}
extension Precision: ExpressibleByArgument {}
extension ResNetConfig.Stem: ExpressibleByArgument {}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serves GET /hello (a small JSON body) with the mocod HTTP server, for wrk and slowhttptest.")
    @Option var port = 8089
    @Option(help: "Stop after this many seconds (0: run until killed).") var seconds = 0.0
    @Option(help: "Hold request handling to this share of one core (0: no limit).") var cpuShare = 0.0

    func run() throws {
        var router = Router()
        router.add("GET", "/hello") { _ in HTTPResponse.json(["hello": "world"]) }
        router.add("POST", "/echo") { r in HTTPResponse(status: .ok, headers: HTTPHeaders([("Content-Type", "application/octet-stream")]), body: .bytes(r.body)) }
        let r = router
        var cfg = ServerConfiguration()
        cfg.port = port
        if cpuShare > 0 {
            let budget = CPUBudget(share: cpuShare)
            budget.setLimited(true)
            cfg.cpuBudget = budget
        }
        var logger = Logger(label: "mocobench.http")
        logger.logLevel = .warning
        let server = HTTPServer(configuration: cfg, logger: logger) { r.handle($0) }
        try server.start()
        print("serving on 127.0.0.1:\(server.port)")
        fflush(nil)
        if seconds > 0 { Thread.sleep(forTimeInterval: seconds) } else { while true { Thread.sleep(forTimeInterval: 3600) } }
        server.shutdown()
    }
}

/// Run under `mpiexec -n N`: checks all-reduce, all-gather and broadcast against their known
/// results on every rank, then times an all-reduce of `--floats` floats (a model's gradients).
/// Rank 0 prints one JSON line; the exit status is non-zero on any rank whose check failed.
struct CollectivesBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "collectives",
        abstract: "Under mpiexec: checks MPI all-reduce/all-gather/broadcast and times an all-reduce.")
    @Option(help: "Floats in the timed all-reduce (ResNet-18 width 32 has about 2.8 M parameters).") var floats = 2_800_000
    @Option var repeats = 5
    @Option(help: "A rank that sleeps instead of joining the first all-reduce (to see the others give up).") var hangRank: Int?
    @Option(help: "Seconds a rank may wait in one collective (the job spec's distributed.timeout_s).") var waitLimit: Double?

    func run() throws {
        let world = try Communicator.world()
        defer { Communicator.finalize() }
        let (rank, size) = (world.rank, world.size)
        if let waitLimit { world.limitWaiting(seconds: waitLimit) }
        if hangRank == rank { sleep(120) }
        var problems: [String] = []
        // All-reduce: rank r contributes (r + 1) * (i + 1); the sum is (i + 1) * size(size+1)/2.
        var values = (0..<1000).map { Float(rank + 1) * Float($0 + 1) }
        try world.allReduceSum(&values)
        let factor = Float(size * (size + 1) / 2)
        if values.enumerated().contains(where: { $0.element != Float($0.offset + 1) * factor }) { problems.append("all-reduce") }
        // All-gather: rank r contributes [r, r, r]; the result is every rank's block in order.
        let gathered = try world.allGather([Float](repeating: Float(rank), count: 3))
        if gathered != (0..<size).flatMap { [Float](repeating: Float($0), count: 3) } { problems.append("all-gather") }
        // Broadcast: rank 0's permutation reaches every rank.
        var perm: [Int32] = rank == 0 ? [3, 1, 2, 0] : [0, 0, 0, 0]
        try world.broadcast(&perm, root: 0)
        if perm != [3, 1, 2, 0] { problems.append("broadcast") }
        // Bytes of a length only the root knows (the spec and a checkpoint reach the ranks so).
        let bytes = try world.broadcastBytes(rank == 0 ? Array("spec of rank 0".utf8) : nil)
        if bytes != Array("spec of rank 0".utf8) { problems.append("broadcast-bytes") }
        // Agreeing on a failure: none, then the lowest failing rank's host and message on every rank.
        if try world.firstFailure(nil) != nil { problems.append("first-failure-none") }
        let failure = try world.firstFailure(rank >= 1 ? "no data on rank \(rank)" : nil)
        if size > 1, failure != Communicator.RankFailure(rank: 1, host: Communicator.hostName, message: "no data on rank 1") {
            problems.append("first-failure")
        }
        // Timed all-reduce of a gradient-sized buffer.
        var grads = [Float](repeating: 1, count: floats)
        try world.barrier()
        var times: [Double] = []
        for _ in 0..<repeats {
            let t0 = now()
            try world.allReduceSum(&grads)
            times.append(now() - t0)
        }
        times.sort()
        if rank == 0 {
            printJSON(["ranks": size, "checks_failed": problems, "ok": problems.isEmpty, "floats": floats,
                       "allreduce_bytes": floats * 4, "allreduce_ms_median": times[times.count / 2] * 1e3,
                       "allreduce_gbytes_per_second": Double(floats * 4) / times[times.count / 2] / 1e9])
        }
        if !problems.isEmpty { throw ExitCode(1) }
    }
}

/// Run under `mpiexec -n N`: trains a tiny MoCo v2 data-parallel for `--steps` steps, N ranks of
/// `--local-batch` random images each, then (rank 0) the same steps in one process on the whole
/// global batch with `bn_splits` N, and compares the losses and the final parameters. Also checks
/// that every rank ends with bit-identical parameters (a hash all-gathered). Rank 0 prints one
/// JSON line; the exit status is non-zero when a check fails.
struct DataParallelCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dp-check", abstract: "Under mpiexec: data-parallel MoCo against one process on the same global batch.")
    @Option var steps = 10
    @Option var localBatch = 32
    @Option var width = 4
    @Option var size = 8
    @Option(help: "Largest relative difference allowed between the runs' losses and parameters.") var tolerance = 1e-4

    func run() throws {
        Runtime.setThreads(1)
        let world = try Communicator.world()
        defer { Communicator.finalize() }
        let global = localBatch * world.size
        guard let shard = BatchShard(rank: world.rank, ranks: world.size, globalBatch: global) else { throw ExitCode(64) }
        let config = ResNetConfig(arch: .resnet18, stem: .cifar, width: width, inChannels: 1, numClasses: 16)
        func build(bnSplits: Int) -> (MoCoModel, SGD) {
            var rng = SeededGenerator(seed: 5)
            let model = MoCoModel(config: config, mlpHidden: 32, queueSize: global * 4, momentum: 0.99, temperature: 0.2,
                                  bnSplits: bnSplits, symmetric: false, rng: &rng)
            return (model, SGD(parameters: model.encoderQ.parameters(), learningRate: 0.05, momentum: 0.9, weightDecay: 1e-4))
        }
        func batch(_ step: Int) -> (Tensor, Tensor) {
            var r = SeededGenerator(seed: 100 + UInt64(step))
            return (Tensor.randn([global, 1, size, size], using: &r), Tensor.randn([global, 1, size, size], using: &r))
        }
        let (dp, dpOpt) = build(bnSplits: 1)
        var shuffle = SeededGenerator(seed: 9)
        var dpLosses: [Float] = []
        for s in 0..<steps {
            let (a, b) = batch(s)
            dpLosses.append(try dp.trainStep(gatherRows(a, Array(shard.range)), gatherRows(b, Array(shard.range)),
                                             optimizer: dpOpt, rng: &shuffle, group: world).loss)
        }
        let params = dp.encoderQ.parameters() + dp.encoderK.parameters()
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for p in params { for v in p.toArray() { hash = (hash ^ UInt64(v.bitPattern)) &* 0x100_0000_01b3 } }
        let mine = [Float(bitPattern: UInt32(truncatingIfNeeded: hash)), Float(bitPattern: UInt32(truncatingIfNeeded: hash >> 32))]
        let hashes = try world.allGather(mine).map(\.bitPattern)
        let identical = (0..<world.size).allSatisfy { hashes[2 * $0] == hashes[0] && hashes[2 * $0 + 1] == hashes[1] }
        var failed = identical ? 0 : 1
        if world.rank == 0 {
            let (ref, refOpt) = build(bnSplits: world.size)
            var shuffleRef = SeededGenerator(seed: 9)
            var refLosses: [Float] = []
            for s in 0..<steps {
                let (a, b) = batch(s)
                refLosses.append(ref.trainStep(a, b, optimizer: refOpt, rng: &shuffleRef).loss)
            }
            let lossDiff = zip(dpLosses, refLosses).map { Double(abs($0 - $1) / max(abs($1), 1e-12)) }.max() ?? 0
            var paramDiff = 0.0
            for (p, q) in zip(params, ref.encoderQ.parameters() + ref.encoderK.parameters()) {
                let a = p.toArray(), b = q.toArray()
                var d = 0.0, n = 0.0
                for i in a.indices { d += Double(a[i] - b[i]) * Double(a[i] - b[i]); n += Double(b[i]) * Double(b[i]) }
                paramDiff = max(paramDiff, (d / max(n, 1e-30)).squareRoot())
            }
            let ok = identical && lossDiff <= tolerance && paramDiff <= tolerance
            if !ok { failed = 1 }
            printJSON(["ranks": world.size, "local_batch": localBatch, "steps": steps, "losses_data_parallel": dpLosses.map(Double.init),
                       "losses_one_process": refLosses.map(Double.init), "max_relative_loss_difference": lossDiff,
                       "max_relative_parameter_difference": paramDiff, "parameters_identical_on_every_rank": identical, "ok": ok])
        }
        var flag = [Float(failed)]
        try world.allReduceSum(&flag)
        if flag[0] > 0 { throw ExitCode(1) }
    }
}

/// Run under `mpiexec -n N`: times the data-parallel MoCo v2 step (`MoCoModel.trainStep(...,
/// group:)`), N ranks each taking `--batch / N` of every global batch with `--threads` threads.
/// Rank 0 prints one JSON line in `step`'s terms (global images/s) plus the gradient all-reduce's
/// bytes and time per step.
struct DataParallelStep: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dp-step", abstract: "Under mpiexec: times the data-parallel MoCo v2 step (global batch split across ranks).")
    @Option var width = 32
    @Option(help: "Global batch (split equally across ranks).") var batch = 256
    @Option var channels = 1
    @Option var size = 28
    @Option(help: "Threads per rank.") var threads = 1
    @Option var queue = 4096
    @Option var steps = 5
    @Option var warmup = 2

    func run() throws {
        Runtime.setThreads(threads)
        let world = try Communicator.world()
        defer { Communicator.finalize() }
        guard let shard = BatchShard(rank: world.rank, ranks: world.size, globalBatch: batch) else {
            throw ValidationError("--batch \(batch) does not split into \(world.size) equal parts")
        }
        var rng = SeededGenerator(seed: 0)
        let k = (queue + batch - 1) / batch * batch
        let config = ResNetConfig(arch: .resnet18, stem: .cifar, width: width, inChannels: channels, numClasses: 128)
        let (model, opt) = Step.mocoV2(config: config, queue: k, bnSplits: 1, rng: &rng)
        var data = SeededGenerator(seed: 10 + UInt64(world.rank))
        let xq = Tensor.randn([shard.localBatch, channels, size, size], using: &data)
        let xk = Tensor.randn([shard.localBatch, channels, size, size], using: &data)
        var shuffle = SeededGenerator(seed: 1)
        for _ in 0..<warmup { _ = try model.trainStep(xq, xk, optimizer: opt, rng: &shuffle, group: world) }
        var times: [Double] = [], reduceTimes: [Double] = []
        var bytes = 0
        var loss: Float = 0
        for _ in 0..<steps {
            try world.barrier()
            let t0 = now()
            let r = try model.trainStep(xq, xk, optimizer: opt, rng: &shuffle, group: world)
            times.append(now() - t0)
            reduceTimes.append(r.allReduce.seconds)
            bytes = r.allReduce.bytes
            loss = r.loss
        }
        times.sort(); reduceTimes.sort()
        let median = times[times.count / 2]
        if world.rank == 0 {
            printJSON(["impl": "mocod-mpi", "ranks": world.size, "threads_per_rank": threads, "width": width, "batch": batch,
                       "channels": channels, "size": size, "queue": k, "steps": steps, "step_ms": median * 1e3,
                       "images_per_second": Double(batch) / median, "allreduce_bytes_per_step": bytes,
                       "allreduce_ms_median": reduceTimes[reduceTimes.count / 2] * 1e3, "loss": Double(loss),
                       "peak_rss_mb_rank0": peakRSSMegabytes()])
        }
    }
}
