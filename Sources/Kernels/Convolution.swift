import CDNNL

/// The geometry of a 2-D convolution (square kernel, equal stride and padding on both axes).
public struct ConvShape: Hashable, Sendable, CustomStringConvertible {
    public var batch: Int
    public var inChannels: Int
    public var height: Int
    public var width: Int
    public var outChannels: Int
    public var kernel: Int
    public var stride: Int
    public var padding: Int
    public var hasBias: Bool
    /// The type of the source, weights, destination and their gradients. With `.bf16` the
    /// primitives accumulate in fp32; bias, weight gradients and bias gradients stay fp32.
    public var dataType: DataType

    public init(batch: Int, inChannels: Int, height: Int, width: Int, outChannels: Int,
                kernel: Int, stride: Int, padding: Int, hasBias: Bool, dataType: DataType = .f32) {
        self.batch = batch; self.inChannels = inChannels; self.height = height; self.width = width
        self.outChannels = outChannels; self.kernel = kernel; self.stride = stride; self.padding = padding
        self.hasBias = hasBias; self.dataType = dataType
    }

    public var outHeight: Int { (height + 2 * padding - kernel) / stride + 1 }
    public var outWidth: Int { (width + 2 * padding - kernel) / stride + 1 }
    public var srcDims: [Int] { [batch, inChannels, height, width] }
    public var weightDims: [Int] { [outChannels, inChannels, kernel, kernel] }
    public var dstDims: [Int] { [batch, outChannels, outHeight, outWidth] }
    /// Multiply-adds of one forward pass, times two.
    public var forwardFLOPs: Double {
        2 * Double(batch * outChannels * outHeight * outWidth) * Double(inChannels * kernel * kernel)
    }
    var ints: [Int] { [batch, inChannels, height, width, outChannels, kernel, stride, padding, hasBias ? 1 : 0, dataType.size] }
    public var description: String { "conv \(srcDims)->\(dstDims) k\(kernel)s\(stride)p\(padding)\(dataType == .bf16 ? " bf16" : "")" }
}

/// oneDNN convolution primitives: forward, backward-data, backward-weights.
///
/// Each is built for the layout its input already has where oneDNN runs that layout with a real
/// (jit) kernel; otherwise the primitive chooses (`format_tag_any`) and the caller reorders to
/// `md(dnnl_query_src_md)`. Plain `nchw` activations with many channels always take the second
/// path, because oneDNN serves them only with its slow reference kernel.
public enum Convolution {
    /// Weights (in the shape's type, or fp32 for the weight gradient), fp32 bias, destination.
    static func descs(_ s: ConvShape, weightGradient: Bool = false) -> (w: MemoryDesc, b: MemoryDesc, dst: MemoryDesc) {
        (MemoryDesc.tagged(s.weightDims, dnnl_format_tag_any, weightGradient ? .f32 : s.dataType), MemoryDesc.plain([s.outChannels]),
         MemoryDesc.tagged(s.dstDims, dnnl_format_tag_any, s.dataType))
    }

    static func isReference(_ pd: dnnl_primitive_desc_t) -> Bool {
        var s: UnsafePointer<CChar>?
        _ = dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &s)
        return s.map { String(cString: $0).hasPrefix("ref") } ?? true
    }

    /// The forward primitive for input layout `src`. `training` selects forward_training (needed
    /// as the hint for backward primitives) over forward_inference.
    public static func forward(_ s: ConvShape, src: MemoryDesc, training: Bool) -> Primitive {
        let key = PrimitiveKey(op: training ? "conv_fwd_train" : "conv_fwd_inf", descs: [src], ints: s.ints)
        return PrimitiveCache.get(key) {
            let prop = training ? dnnl_forward_training : dnnl_forward_inference
            func make(_ srcMD: MemoryDesc) -> dnnl_primitive_desc_t? {
                var (w, b, dst) = descs(s)
                var x = srcMD.with(s.dataType).raw
                let strides = dnnlDims([s.stride, s.stride])
                let pad = dnnlDims([s.padding, s.padding])
                var d = dnnl_convolution_desc_t()
                let st = withUnsafePointer(to: &b.raw) { bp in
                    dnnl_convolution_forward_desc_init(&d, prop, dnnl_convolution_direct, &x, &w.raw,
                                                       s.hasBias ? bp : nil, &dst.raw, strides, pad, pad)
                }
                guard st == dnnl_success else { return nil }
                return makePD(&d)
            }
            let wantsOwnLayout = !(src.isPlain && s.inChannels > 4)
            if wantsOwnLayout, let pd = make(src), !isReference(pd) { return Primitive(pd: pd) }
            guard let pd = make(MemoryDesc.tagged(s.srcDims, dnnl_format_tag_any, s.dataType)) else {
                fatalError("oneDNN has no convolution for \(s)")
            }
            return Primitive(pd: pd)
        }
    }

    /// Backward-data primitive producing `diffSrc`'s layout from `diffDst`'s where possible.
    public static func backwardData(_ s: ConvShape, diffSrc: MemoryDesc, diffDst: MemoryDesc, forward fwd: Primitive) -> Primitive {
        let key = PrimitiveKey(op: "conv_bwd_data", descs: [diffSrc, diffDst], ints: s.ints)
        return PrimitiveCache.get(key) {
            func make(_ dsrc: MemoryDesc, _ ddst: MemoryDesc) -> dnnl_primitive_desc_t? {
                var (w, _, _) = descs(s)
                var a = dsrc.with(s.dataType).raw, c = ddst.with(s.dataType).raw
                let strides = dnnlDims([s.stride, s.stride])
                let pad = dnnlDims([s.padding, s.padding])
                var d = dnnl_convolution_desc_t()
                let st = dnnl_convolution_backward_data_desc_init(&d, dnnl_convolution_direct, &a, &w.raw, &c,
                                                               strides, pad, pad)
                guard st == dnnl_success else { return nil }
                return makePD(&d, hint: fwd.pd)
            }
            if !diffSrc.isPlain, let pd = make(diffSrc, diffDst), !isReference(pd) { return Primitive(pd: pd) }
            guard let pd = make(MemoryDesc.tagged(s.srcDims, dnnl_format_tag_any, s.dataType),
                                MemoryDesc.tagged(s.dstDims, dnnl_format_tag_any, s.dataType)) else {
                fatalError("oneDNN has no backward-data convolution for \(s)")
            }
            return Primitive(pd: pd)
        }
    }

    /// Backward-weights primitive reading `src` and `diffDst` in their layouts where possible.
    public static func backwardWeights(_ s: ConvShape, src: MemoryDesc, diffDst: MemoryDesc, forward fwd: Primitive) -> Primitive {
        let key = PrimitiveKey(op: "conv_bwd_weights", descs: [src, diffDst], ints: s.ints)
        return PrimitiveCache.get(key) {
            func make(_ x: MemoryDesc, _ ddst: MemoryDesc) -> dnnl_primitive_desc_t? {
                var (w, b, _) = descs(s, weightGradient: true)
                var a = x.with(s.dataType).raw, c = ddst.with(s.dataType).raw
                let strides = dnnlDims([s.stride, s.stride])
                let pad = dnnlDims([s.padding, s.padding])
                var d = dnnl_convolution_desc_t()
                let st = withUnsafePointer(to: &b.raw) { bp in
                    dnnl_convolution_backward_weights_desc_init(&d, dnnl_convolution_direct, &a, &w.raw,
                                                                s.hasBias ? bp : nil, &c, strides, pad, pad)
                }
                guard st == dnnl_success else { return nil }
                return makePD(&d, hint: fwd.pd)
            }
            if let pd = make(src, diffDst), !isReference(pd) { return Primitive(pd: pd) }
            guard let pd = make(MemoryDesc.tagged(s.srcDims, dnnl_format_tag_any, s.dataType),
                                MemoryDesc.tagged(s.dstDims, dnnl_format_tag_any, s.dataType)) else {
                fatalError("oneDNN has no backward-weights convolution for \(s)")
            }
            return Primitive(pd: pd)
        }
    }
}
