import Foundation
import Kernels
import NN
import Autograd

/// Where the committed fixtures live (found from this file's path, so tests need no bundle).
public enum Fixtures {
    /// The signature and IHDR chunk of a PNG declaring `width x height` (no pixel data): a
    /// decompression bomb's header when the size is huge.
    public static func pngHeader(width: Int, height: Int) -> [UInt8] {
        func be(_ v: Int) -> [UInt8] { [UInt8(v >> 24 & 0xff), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)] }
        let body = Array("IHDR".utf8) + be(width) + be(height) + [8, 2, 0, 0, 0]
        var crc: UInt32 = 0xffff_ffff
        for b in body {
            crc ^= UInt32(b)
            for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xedb8_8320 : crc >> 1 }
        }
        return [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + be(13) + body + be(Int(~crc))
    }

    public static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    /// A golden file written by `scripts/make_golden.py`.
    public static func golden(_ name: String) throws -> SafeTensorsFile {
        try SafeTensorsFile.read(from: root.appendingPathComponent("golden/\(name).safetensors"))
    }
}

extension SafeTensorsFile {
    /// The named tensor as a new `Tensor`; traps with the name when missing (a broken fixture).
    public func t(_ name: String, requiresGrad: Bool = false) -> Tensor {
        guard let s = self[name] else { fatalError("fixture has no tensor \(name); has \(tensors.map(\.name))") }
        return try! s.tensor(requiresGrad: requiresGrad)
    }

    public func values(_ name: String) -> [Float] {
        guard let s = self[name] else { fatalError("fixture has no tensor \(name)") }
        return try! s.floats()
    }
}

/// Result of comparing two float arrays with `|a - e| <= atol + rtol * |e|`.
public struct Closeness: CustomStringConvertible {
    public let ok: Bool
    public let worstIndex: Int
    public let worstActual: Float
    public let worstExpected: Float
    public let maxAbsError: Float
    public var description: String {
        "max |err| \(maxAbsError) at \(worstIndex): got \(worstActual), expected \(worstExpected)"
    }
}

public func closeness(_ actual: [Float], _ expected: [Float], rtol: Float = 1e-4, atol: Float = 1e-5) -> Closeness {
    precondition(actual.count == expected.count, "compared arrays differ in length: \(actual.count) vs \(expected.count)")
    var ok = true, worst = 0, worstExcess: Float = -.infinity, maxAbs: Float = 0
    for i in 0..<actual.count {
        let err = abs(actual[i] - expected[i])
        let excess = err - (atol + rtol * abs(expected[i]))
        if !(excess <= 0) { ok = false }
        if excess > worstExcess || excess.isNaN { worstExcess = excess.isNaN ? .infinity : excess; worst = i }
        maxAbs = max(maxAbs, err.isNaN ? .infinity : err)
    }
    return Closeness(ok: ok, worstIndex: worst, worstActual: actual.isEmpty ? 0 : actual[worst],
                     worstExpected: expected.isEmpty ? 0 : expected[worst], maxAbsError: maxAbs)
}

/// Central finite differences of `f` (a scalar of the inputs) at up to `samples` coordinates of
/// each input, compared with the gradients backward() produced.
public struct GradientCheck {
    public var worstRelativeError: Float = 0
    public var report: [String] = []
}

/// Checks `∂ sum(f(inputs) * gy) / ∂ inputs` by central differences in fp32.
/// The relative error uses `max(|numeric|, |analytic|, floor)` as its scale.
public func gradientCheck(_ inputs: [Tensor], step h: Float = 1e-2, samples: Int = 24, seed: UInt64 = 7,
                          floor: Float = 1e-2, _ f: ([Tensor]) -> Tensor) -> GradientCheck {
    var rng = SeededGenerator(seed: seed)
    let y0 = f(inputs)
    let gy = Tensor.randn(y0.shape, using: &rng)
    let gyValues = gy.toArray()
    for x in inputs { x.grad = nil }
    func objective() -> Double {
        let y = GradMode.withNoGrad { f(inputs) }.toArray()
        var s = 0.0
        for i in 0..<y.count { s += Double(y[i]) * Double(gyValues[i]) }
        return s
    }
    let y = f(inputs)
    y.backward(gy)
    var result = GradientCheck()
    for (n, x) in inputs.enumerated() where x.requiresGrad {
        let analytic = x.grad?.toArray() ?? [Float](repeating: 0, count: x.count)
        precondition(x.isPlain, "gradientCheck perturbs row-major inputs")
        let idx = x.count <= samples ? Array(0..<x.count) : (0..<samples).map { _ in Int(rng.next() % UInt64(x.count)) }
        for i in idx {
            func set(_ v: Float) { x.withUnsafeMutableFloats { $0[i] = v } }
            let old = x.withUnsafeFloats { $0[i] }
            set(old + h)
            let up = objective()
            set(old - h)
            let down = objective()
            set(old)
            let numeric = Float((up - down) / Double(2 * h))
            let scale = max(abs(numeric), abs(analytic[i]), floor)
            let rel = abs(numeric - analytic[i]) / scale
            if rel > result.worstRelativeError {
                result.worstRelativeError = rel
                result.report.append("input \(n)[\(i)]: numeric \(numeric) analytic \(analytic[i])")
            }
        }
    }
    return result
}

/// `mpiexec -n <ranks> <executable> <arguments>`, configured and not yet run: allowed as root (CI
/// runs as root) and without cross-memory attach (containers often forbid it); output discarded
/// unless the caller sets pipes. Throws when the build or Open MPI's launcher is missing.
public func mpiexec(_ executable: URL, ranks: Int = 2, _ arguments: [String]) throws -> Process {
    struct Missing: Error, CustomStringConvertible { let description: String }
    guard FileManager.default.isExecutableFile(atPath: executable.path) else {
        throw Missing(description: "build \(executable.lastPathComponent) first (swift build)")
    }
    guard let launcher = ["/usr/bin/mpiexec", "/usr/local/bin/mpiexec"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
        throw Missing(description: "mpiexec not found: install openmpi-bin (scripts/install-deps.sh)")
    }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: launcher)
    p.arguments = ["-n", String(ranks), "--oversubscribe", executable.path] + arguments
    var env = ProcessInfo.processInfo.environment
    env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
    env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    env["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none"
    p.environment = env
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    return p
}
