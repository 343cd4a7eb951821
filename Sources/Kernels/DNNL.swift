import CDNNL
import Synchronization

@inline(__always)
func check(_ status: dnnl_status_t, _ call: @autoclosure () -> String) {
    if status != dnnl_success {
        fatalError("oneDNN: \(call()) failed with status \(status.rawValue)")
    }
}

// MARK: - Engine and stream

/// The CPU engine and the stream every primitive runs on.
///
/// oneDNN's CPU engine is thread-safe; the stream is used from the single compute thread that a
/// training run is confined to (see `Runtime`). Tests that run kernels are serialized.
final class DNNLContext: @unchecked Sendable {
    /// Safe to share: both handles are created once and never mutated; oneDNN documents CPU
    /// engines as thread-safe, and the stream is only used by the one compute thread at a time.
    let engine: dnnl_engine_t
    let stream: dnnl_stream_t

    static let shared = DNNLContext()

    private init() {
        _ = Runtime.amxTilePermission   // before oneDNN first looks at the CPU
        var e: dnnl_engine_t?
        check(dnnl_engine_create(&e, dnnl_cpu, 0), "dnnl_engine_create")
        var s: dnnl_stream_t?
        check(dnnl_stream_create(&s, e!, dnnl_stream_default_flags.rawValue), "dnnl_stream_create")
        engine = e!
        stream = s!
    }
}

// MARK: - Memory descriptors

/// The element type of a tensor's bytes: fp32, or bf16 (the upper half of an fp32, used for
/// activations and the operands of convolutions and matmuls under bf16 mixed precision).
public enum DataType: Sendable, Hashable {
    case f32, bf16

    var dnnl: dnnl_data_type_t { self == .f32 ? dnnl_f32 : dnnl_bf16 }
    /// Bytes per element.
    public var size: Int { self == .f32 ? 4 : 2 }
}

/// A oneDNN memory descriptor: logical dims plus the physical layout a primitive chose.
///
/// Equality and hashing use the fields that define the layout (dims, padding, blocking), so two
/// descriptors that describe the same bytes compare equal whatever garbage sits in unused union bytes.
public struct MemoryDesc: Hashable, @unchecked Sendable {
    /// Safe to send: a plain C struct of integers with no pointers.
    public var raw: dnnl_memory_desc_t

    public init(raw: dnnl_memory_desc_t) { self.raw = raw }

    /// Row-major (`a`, `ab`, `abc`, `abcd`, `abcde`) descriptor for `dims`, fp32 unless told.
    public static func plain(_ dims: [Int], _ type: DataType = .f32) -> MemoryDesc {
        precondition(!dims.isEmpty && dims.count <= 5, "plain descriptors cover 1 to 5 dims, got \(dims)")
        let tags: [dnnl_format_tag_t] = [dnnl_a, dnnl_ab, dnnl_abc, dnnl_abcd, dnnl_abcde]
        return tagged(dims, tags[dims.count - 1], type)
    }

    /// A descriptor with an explicit format tag (`dnnl_format_tag_any` lets a primitive choose).
    public static func tagged(_ dims: [Int], _ tag: dnnl_format_tag_t, _ type: DataType = .f32) -> MemoryDesc {
        var md = dnnl_memory_desc_t()
        let d = dnnlDims(dims)
        check(dnnl_memory_desc_init_by_tag(&md, Int32(dims.count), d, type.dnnl, tag), "memory_desc_init_by_tag \(dims)")
        return MemoryDesc(raw: md)
    }

    /// A 2-D descriptor read through explicit strides (in elements): `[cols, 1]` is row-major,
    /// `[1, rows]` the transpose of a row-major `cols x rows` matrix.
    public static func strided(_ dims: [Int], strides: [Int], _ type: DataType) -> MemoryDesc {
        var md = dnnl_memory_desc_t()
        check(dnnl_memory_desc_init_by_strides(&md, Int32(dims.count), dnnlDims(dims), type.dnnl, dnnlDims(strides)),
              "memory_desc_init_by_strides \(dims)")
        return MemoryDesc(raw: md)
    }

    /// The element type.
    public var dataType: DataType { raw.data_type == dnnl_bf16 ? .bf16 : .f32 }

    /// The same layout (dims, blocking, padding) holding elements of `type`.
    public func with(_ type: DataType) -> MemoryDesc {
        if type == dataType { return self }
        var r = raw
        r.data_type = type.dnnl
        return MemoryDesc(raw: r)
    }

    public var ndims: Int { Int(raw.ndims) }
    public var dims: [Int] { withUnsafeBytes(of: raw.dims) { Array($0.bindMemory(to: Int64.self).prefix(ndims)).map(Int.init) } }
    /// Bytes the layout occupies, padding included.
    public var byteCount: Int { Int(withUnsafePointer(to: raw) { dnnl_memory_desc_get_size($0) }) }
    public var isAny: Bool { raw.format_kind == dnnl_format_kind_any }
    /// Strides of the outer (non-blocked) dimensions, in elements.
    public var strides: [Int] {
        withUnsafeBytes(of: raw.format_desc.blocking.strides) { Array($0.bindMemory(to: Int64.self).prefix(ndims)).map(Int.init) }
    }

    /// Whether the bytes are the row-major layout of `dims` (no blocking, no padding), in
    /// whatever element type.
    public var isPlain: Bool { self == MemoryDesc.plain(dims, dataType) }

    /// The same layout restricted to the first `n` items of dimension 0 (the batch), at offset 0.
    /// Valid for layouts whose batch dimension is outermost (nchw, nhwc, nChw16c).
    public func batchSlice(_ n: Int) -> MemoryDesc {
        let d = dnnlDims(dims.enumerated().map { $0.offset == 0 ? n : $0.element })
        let off = dnnlDims(Array(repeating: 0, count: ndims))
        var out = dnnl_memory_desc_t()
        var parent = raw
        check(dnnl_memory_desc_init_submemory(&out, &parent, d, off), "memory_desc_init_submemory")
        return MemoryDesc(raw: out)
    }

    private var key: [Int64] {
        var k: [Int64] = [Int64(raw.ndims), Int64(raw.data_type.rawValue), Int64(raw.format_kind.rawValue), raw.offset0]
        let n = ndims
        withUnsafeBytes(of: raw.dims) { k += $0.bindMemory(to: Int64.self).prefix(n) }
        withUnsafeBytes(of: raw.padded_dims) { k += $0.bindMemory(to: Int64.self).prefix(n) }
        withUnsafeBytes(of: raw.padded_offsets) { k += $0.bindMemory(to: Int64.self).prefix(n) }
        if raw.format_kind == dnnl_blocked {
            let b = raw.format_desc.blocking
            withUnsafeBytes(of: b.strides) { k += $0.bindMemory(to: Int64.self).prefix(n) }
            k.append(Int64(b.inner_nblks))
            let nb = Int(b.inner_nblks)
            withUnsafeBytes(of: b.inner_blks) { k += $0.bindMemory(to: Int64.self).prefix(nb) }
            withUnsafeBytes(of: b.inner_idxs) { k += $0.bindMemory(to: Int64.self).prefix(nb) }
        }
        return k
    }

    public static func == (a: MemoryDesc, b: MemoryDesc) -> Bool { a.key == b.key }
    public func hash(into h: inout Hasher) { h.combine(key) }

    /// A short human-readable layout name for diagnostics, e.g. `nChw16c` style blocking info.
    public var layoutName: String {
        if isAny { return "any" }
        if isPlain { return "plain" }
        let b = raw.format_desc.blocking
        var s = "strides=\(strides)"
        if b.inner_nblks > 0 {
            let nb = Int(b.inner_nblks)
            let blks = withUnsafeBytes(of: b.inner_blks) { Array($0.bindMemory(to: Int64.self).prefix(nb)) }
            let idxs = withUnsafeBytes(of: b.inner_idxs) { Array($0.bindMemory(to: Int64.self).prefix(nb)) }
            s += " blocks=\(zip(idxs, blks).map { "\($0):\($1)" })"
        }
        return s
    }
}

/// A oneDNN dims array (12 slots, unused ones zero), passed where the C API takes `const dnnl_dims_t`.
/// An array, not the imported tuple: `&tuple.0` may hand C a pointer to a one-element temporary.
func dnnlDims(_ a: [Int]) -> [Int64] {
    precondition(a.count <= 12)
    return a.map(Int64.init) + [Int64](repeating: 0, count: 12 - a.count)
}

// MARK: - Primitives and their cache

/// A created primitive with its descriptor; the descriptors it was built for are queried from it.
public final class Primitive: @unchecked Sendable {
    /// Safe to share: oneDNN primitives are immutable after creation and safe to execute from any
    /// thread; this wrapper has no mutable state.
    let pd: dnnl_primitive_desc_t
    let prim: dnnl_primitive_t

    init(pd: dnnl_primitive_desc_t) {
        self.pd = pd
        var p: dnnl_primitive_t?
        check(dnnl_primitive_create(&p, pd), "primitive_create")
        prim = p!
    }

    deinit {
        dnnl_primitive_destroy(prim)
        dnnl_primitive_desc_destroy(pd)
    }

    /// The memory descriptor the primitive expects for an argument.
    public func md(_ arg: Arg) -> MemoryDesc {
        let (what, index) = arg.query
        return MemoryDesc(raw: dnnl_primitive_desc_query_md(pd, what, index)!.pointee)
    }

    /// The implementation oneDNN picked (`jit:avx512_core`, `ref:any`, ...).
    public var implementation: String {
        var s: UnsafePointer<CChar>?
        _ = dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &s)
        return s.map { String(cString: $0) } ?? "?"
    }

    /// Runs the primitive on the shared stream with `(argument, descriptor, pointer)` triples.
    public func execute(_ args: [(Arg, MemoryDesc, UnsafeMutableRawPointer)]) {
        let ctx = DNNLContext.shared
        var mems: [dnnl_exec_arg_t] = []
        mems.reserveCapacity(args.count)
        for (arg, desc, ptr) in args {
            var m: dnnl_memory_t?
            var raw = desc.raw
            check(dnnl_memory_create(&m, &raw, ctx.engine, ptr), "memory_create")
            mems.append(dnnl_exec_arg_t(arg: arg.code, memory: m))
        }
        check(dnnl_primitive_execute(prim, ctx.stream, Int32(mems.count), mems), "primitive_execute \(implementation)")
        check(dnnl_stream_wait(ctx.stream), "stream_wait")
        for m in mems { dnnl_memory_destroy(m.memory) }
    }
}

/// A primitive's argument, named for both execution and descriptor queries.
public enum Arg: Sendable {
    case src, src1, weights, bias, dst, diffSrc, diffDst, diffWeights, diffBias
    case mean, variance, scale, shift, diffScale, diffShift, workspace, from, to

    var code: Int32 {
        switch self {
        case .src: DNNL_ARG_SRC
        case .src1: DNNL_ARG_SRC_1
        case .weights: DNNL_ARG_WEIGHTS
        case .bias: DNNL_ARG_BIAS
        case .dst: DNNL_ARG_DST
        case .diffSrc: DNNL_ARG_DIFF_SRC
        case .diffDst: DNNL_ARG_DIFF_DST
        case .diffWeights: DNNL_ARG_DIFF_WEIGHTS
        case .diffBias: DNNL_ARG_DIFF_BIAS
        case .mean: DNNL_ARG_MEAN
        case .variance: DNNL_ARG_VARIANCE
        case .scale: DNNL_ARG_SCALE
        case .shift: DNNL_ARG_SHIFT
        case .diffScale: DNNL_ARG_DIFF_SCALE
        case .diffShift: DNNL_ARG_DIFF_SHIFT
        case .workspace: DNNL_ARG_WORKSPACE
        case .from: DNNL_ARG_FROM
        case .to: DNNL_ARG_TO
        }
    }

    var query: (dnnl_query_t, Int32) {
        switch self {
        case .src, .from: (dnnl_query_src_md, 0)
        case .src1: (dnnl_query_src_md, 1)
        case .weights: (dnnl_query_weights_md, 0)
        case .bias: (dnnl_query_weights_md, 1)
        case .dst, .to: (dnnl_query_dst_md, 0)
        case .diffSrc: (dnnl_query_diff_src_md, 0)
        case .diffDst: (dnnl_query_diff_dst_md, 0)
        case .diffWeights: (dnnl_query_diff_weights_md, 0)
        case .diffBias: (dnnl_query_diff_weights_md, 1)
        case .mean: (dnnl_query_src_md, 1)
        case .variance: (dnnl_query_src_md, 2)
        case .scale, .shift: (dnnl_query_weights_md, 0)
        case .diffScale, .diffShift: (dnnl_query_diff_weights_md, 0)
        case .workspace: (dnnl_query_workspace_md, 0)
        }
    }
}

/// A key for the primitive cache: the op's name and every parameter that shapes the primitive.
struct PrimitiveKey: Hashable {
    var op: String
    var descs: [MemoryDesc]
    var ints: [Int]
}

/// Primitives are created once per shape and layout, then reused by every later step.
enum PrimitiveCache {
    private static let cache = Mutex<[PrimitiveKey: Primitive]>([:])

    static func get(_ key: PrimitiveKey, make: () -> Primitive) -> Primitive {
        if let p = cache.withLock({ $0[key] }) { return p }
        let p = make()
        cache.withLock { $0[key] = p }
        return p
    }

    /// Number of primitives created so far (a steady-state step adds none).
    public static var count: Int { cache.withLock { $0.count } }
}

/// Creates a primitive descriptor from an op descriptor, or nil where oneDNN has no implementation.
func makePD<D>(_ desc: inout D, attr: dnnl_primitive_attr_t? = nil, hint: dnnl_primitive_desc_t? = nil) -> dnnl_primitive_desc_t? {
    var pd: dnnl_primitive_desc_t?
    let status = withUnsafePointer(to: &desc) { ptr in
        dnnl_primitive_desc_create(&pd, UnsafeRawPointer(ptr), attr, DNNLContext.shared.engine, hint)
    }
    return status == dnnl_success ? pd : nil
}

public enum KernelStats {
    /// Number of distinct primitives created (a steady-state training step creates none).
    public static var primitivesCreated: Int { PrimitiveCache.count }
}
