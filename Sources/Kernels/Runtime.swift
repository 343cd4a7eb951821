import CDNNL
import COpenBLAS
import Foundation

/// Process-wide setup of the numeric libraries: thread counts, the OpenBLAS kernel, diagnostics.
public enum Runtime {
    /// Sets the number of threads OpenMP (shared by oneDNN and OpenBLAS) uses for calls made from
    /// the calling thread. OpenMP's setting is per calling thread, so call this on the compute thread.
    public static func setThreads(_ n: Int) {
        omp_set_num_threads(Int32(n))
        openblas_set_num_threads(Int32(n))
    }

    public static var maxThreads: Int { Int(omp_get_max_threads()) }

    /// The OpenBLAS kernel family in use (`SkylakeX`, `Haswell`, `Prescott` ...).
    public static var openBLASCore: String { String(cString: openblas_get_corename()) }

    /// Whether Linux lets this process use AMX tile data. Requested once, before oneDNN first looks
    /// at the CPU (its dispatcher runs AMX kernels only where the permission is held); every path
    /// into oneDNN (`dnnlISA`, the engine) touches this first.
    public static let amxTilePermission: Bool = mocod_request_amx_tile_data() != 0

    /// oneDNN's instruction set on this CPU, e.g. `avx512_core_bf16`.
    public static var dnnlISA: String {
        _ = amxTilePermission
        return switch dnnl_get_effective_cpu_isa() {
        case dnnl_cpu_isa_avx512_core_amx: "avx512_core_amx"
        case dnnl_cpu_isa_avx512_core_bf16: "avx512_core_bf16"
        case dnnl_cpu_isa_avx512_core_vnni: "avx512_core_vnni"
        case dnnl_cpu_isa_avx512_core: "avx512_core"
        case dnnl_cpu_isa_avx2_vnni: "avx2_vnni"
        case dnnl_cpu_isa_avx2: "avx2"
        case dnnl_cpu_isa_avx: "avx"
        case dnnl_cpu_isa_sse41: "sse41"
        default: "other(\(dnnl_get_effective_cpu_isa().rawValue))"
        }
    }

    /// What this machine offers for bf16: the CPU's instructions (from `/proc/cpuinfo`) and what
    /// oneDNN's dispatcher actually runs (its effective ISA).
    public struct BF16Support: Codable, Sendable, Equatable {
        /// AVX512-BF16 (`vdpbf16ps`): bf16 dot products on the vector units.
        public var avx512_bf16: Bool
        /// AMX tiles (`amx_tile`) with bf16 tile multiplies (`amx_bf16`).
        public var amx_bf16: Bool
        /// oneDNN dispatches its bf16 kernels (`avx512_core_bf16` or above).
        public var onednn_bf16: Bool
        /// oneDNN dispatches its AMX kernels (`avx512_core_amx`). oneDNN 2.6 may leave AMX off
        /// (initial support) even where the CPU has it.
        public var onednn_amx: Bool
        /// Linux granted this process AMX tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), which
        /// AMX kernels need; false wherever the CPU has no AMX.
        public var amx_permission: Bool

        public init(avx512_bf16: Bool, amx_bf16: Bool, onednn_bf16: Bool, onednn_amx: Bool, amx_permission: Bool = false) {
            self.avx512_bf16 = avx512_bf16; self.amx_bf16 = amx_bf16; self.onednn_bf16 = onednn_bf16; self.onednn_amx = onednn_amx
            self.amx_permission = amx_permission
        }

        /// From the `flags` line of `/proc/cpuinfo`, oneDNN's effective ISA name (`dnnlISA`) and
        /// whether the AMX tile-data permission is held (`amxTilePermission`).
        public static func from(cpuinfo: String, onednnISA: String, amxPermission: Bool = false) -> BF16Support {
            let flags = Set(cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ").map(String.init) ?? [])
            let bf16ISAs: Set<String> = ["avx512_core_bf16", "avx512_core_amx"]
            let amx = flags.contains("amx_tile") && flags.contains("amx_bf16")
            return BF16Support(avx512_bf16: flags.contains("avx512_bf16"), amx_bf16: amx,
                               onednn_bf16: bf16ISAs.contains(onednnISA), onednn_amx: onednnISA == "avx512_core_amx",
                               amx_permission: amx && amxPermission)
        }
    }

    /// This machine's bf16 support (see `BF16Support`).
    public static var bf16: BF16Support {
        BF16Support.from(cpuinfo: (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? "", onednnISA: dnnlISA,
                         amxPermission: amxTilePermission)
    }

    /// The OpenBLAS core families with AVX-512 kernels.
    static let fastCores: Set<String> = ["skylakex", "cooperlake", "sapphirerapids"]

    /// Whether this CPU runs AVX-512 (so OpenBLAS's SkylakeX kernels apply).
    public static var cpuHasAVX512: Bool {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return false }
        return info.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ").contains("avx512f") ?? false
    }

    /// Debian's OpenBLAS 0.3.21 does not recognise recent CPUs and falls back to a slow generic
    /// kernel (`Prescott`); it reads `OPENBLAS_CORETYPE` only when the library loads, so setting it
    /// in `main` is too late. Entry points call this first: where the CPU has AVX-512 and the
    /// variable does not already name an AVX-512 core, it sets `OPENBLAS_CORETYPE=SkylakeX` and
    /// re-executes the program with the same arguments. `MOCOD_KEEP_OPENBLAS_CORE=1` opts out.
    public static func ensureFastOpenBLAS() {
        let env = ProcessInfo.processInfo.environment
        if env["MOCOD_KEEP_OPENBLAS_CORE"] == "1" { return }
        if let core = env["OPENBLAS_CORETYPE"], fastCores.contains(core.lowercased()) { return }
        guard cpuHasAVX512, env["MOCOD_REEXECED"] == nil else { return }
        setenv("OPENBLAS_CORETYPE", "SkylakeX", 1)
        setenv("MOCOD_REEXECED", "1", 1)
        let args = CommandLine.arguments
        var cargs: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) }
        cargs.append(nil)
        execv("/proc/self/exe", &cargs)
        // execv only returns on failure; carry on with the slow kernel rather than stop.
        FileHandle.standardError.write(Data("mocod: could not re-exec with OPENBLAS_CORETYPE=SkylakeX (errno \(errno)); GEMM runs on \(openBLASCore)\n".utf8))
    }

    /// Whether OpenBLAS runs an AVX-512 kernel (or the CPU has none to run).
    public static var openBLASIsFast: Bool { !cpuHasAVX512 || fastCores.contains(openBLASCore.lowercased()) }
}
