import CDNNL

/// oneDNN batch-normalization primitives over a data layout (2-D `N x C` or 4-D `N x C x H x W`).
///
/// Three modes: batch statistics (training), running statistics with gradients (an eval-mode BN
/// inside a graph that still back-propagates), and running statistics for inference.
/// `fuseReLU` applies ReLU inside the primitive; its backward then needs the workspace.
public enum BatchNormKernel {
    public enum Mode: Int, Sendable { case batchStats, globalStatsTrainable, inference }

    static func flags(_ mode: Mode, _ fuseReLU: Bool) -> UInt32 {
        var f = dnnl_use_scale.rawValue | dnnl_use_shift.rawValue
        if mode != .batchStats { f |= dnnl_use_global_stats.rawValue }
        if fuseReLU { f |= dnnl_fuse_norm_relu.rawValue }
        return f
    }

    public static func forward(data: MemoryDesc, epsilon: Float, mode: Mode, fuseReLU: Bool) -> Primitive {
        let key = PrimitiveKey(op: "bn_fwd", descs: [data], ints: [mode.rawValue, fuseReLU ? 1 : 0, Int(epsilon.bitPattern)])
        return PrimitiveCache.get(key) {
            var d = dnnl_batch_normalization_desc_t()
            var md = data.raw
            let prop = mode == .inference ? dnnl_forward_inference : dnnl_forward_training
            check(dnnl_batch_normalization_forward_desc_init(&d, prop, &md, epsilon, flags(mode, fuseReLU)), "bnorm_fwd_desc_init")
            guard let pd = makePD(&d) else { fatalError("oneDNN has no batch norm for \(data.dims)") }
            return Primitive(pd: pd)
        }
    }

    public static func backward(data: MemoryDesc, diff: MemoryDesc, epsilon: Float, mode: Mode, fuseReLU: Bool, forward fwd: Primitive) -> Primitive {
        let key = PrimitiveKey(op: "bn_bwd", descs: [data, diff], ints: [mode.rawValue, fuseReLU ? 1 : 0, Int(epsilon.bitPattern)])
        return PrimitiveCache.get(key) {
            var d = dnnl_batch_normalization_desc_t()
            var md = data.raw, dd = diff.raw
            check(dnnl_batch_normalization_backward_desc_init(&d, dnnl_backward, &dd, &md, epsilon, flags(mode, fuseReLU)), "bnorm_bwd_desc_init")
            guard let pd = makePD(&d, hint: fwd.pd) else { fatalError("oneDNN has no batch norm backward for \(data.dims)") }
            return Primitive(pd: pd)
        }
    }
}

/// oneDNN pooling: max pooling (training keeps a workspace for backward) and average pooling.
public enum PoolingKernel {
    public struct Shape: Hashable, Sendable {
        public var kernel: Int, stride: Int, padding: Int, max: Bool
        public init(kernel: Int, stride: Int, padding: Int, max: Bool) {
            self.kernel = kernel; self.stride = stride; self.padding = padding; self.max = max
        }
        public func outDims(_ dims: [Int]) -> [Int] {
            [dims[0], dims[1], (dims[2] + 2 * padding - kernel) / stride + 1, (dims[3] + 2 * padding - kernel) / stride + 1]
        }
    }

    static func alg(_ s: Shape) -> dnnl_alg_kind_t { s.max ? dnnl_pooling_max : dnnl_pooling_avg_exclude_padding }

    public static func forward(_ s: Shape, src: MemoryDesc, training: Bool) -> Primitive {
        let key = PrimitiveKey(op: "pool_fwd", descs: [src], ints: [s.kernel, s.stride, s.padding, s.max ? 1 : 0, training ? 1 : 0])
        return PrimitiveCache.get(key) {
            var d = dnnl_pooling_desc_t()
            var x = src.raw
            var y = MemoryDesc.tagged(s.outDims(src.dims), dnnl_format_tag_any, src.dataType).raw
            let st = dnnlDims([s.stride, s.stride]), k = dnnlDims([s.kernel, s.kernel])
            let p = dnnlDims([s.padding, s.padding])
            check(dnnl_pooling_forward_desc_init(&d, training ? dnnl_forward_training : dnnl_forward_inference, alg(s),
                                                 &x, &y, st, k, p, p), "pooling_fwd_desc_init")
            guard let pd = makePD(&d) else { fatalError("oneDNN has no pooling for \(src.dims)") }
            return Primitive(pd: pd)
        }
    }

    public static func backward(_ s: Shape, diffSrc: MemoryDesc, diffDst: MemoryDesc, forward fwd: Primitive) -> Primitive {
        let key = PrimitiveKey(op: "pool_bwd", descs: [diffSrc, diffDst], ints: [s.kernel, s.stride, s.padding, s.max ? 1 : 0])
        return PrimitiveCache.get(key) {
            var d = dnnl_pooling_desc_t()
            var x = diffSrc.raw, y = diffDst.raw
            let st = dnnlDims([s.stride, s.stride]), k = dnnlDims([s.kernel, s.kernel])
            let p = dnnlDims([s.padding, s.padding])
            check(dnnl_pooling_backward_desc_init(&d, alg(s), &x, &y, st, k, p, p), "pooling_bwd_desc_init")
            guard let pd = makePD(&d, hint: fwd.pd) else { fatalError("oneDNN has no pooling backward for \(diffSrc.dims)") }
            return Primitive(pd: pd)
        }
    }
}

/// Elementwise oneDNN primitives that work in any layout: ReLU, add (optionally followed by ReLU)
/// and reorders between layouts.
public enum ElementwiseKernel {
    public static func reluForward(_ data: MemoryDesc) -> Primitive {
        PrimitiveCache.get(PrimitiveKey(op: "relu_fwd", descs: [data], ints: [])) {
            var d = dnnl_eltwise_desc_t()
            var md = data.raw
            check(dnnl_eltwise_forward_desc_init(&d, dnnl_forward_training, dnnl_eltwise_relu_use_dst_for_bwd, &md, 0, 0), "eltwise_fwd")
            return Primitive(pd: makePD(&d)!)
        }
    }

    /// ReLU backward from the forward's output (`dst`): `dx = dy * (y > 0)`.
    public static func reluBackward(data: MemoryDesc, diff: MemoryDesc) -> Primitive {
        PrimitiveCache.get(PrimitiveKey(op: "relu_bwd", descs: [data, diff], ints: [])) {
            var f = dnnl_eltwise_desc_t()
            var md = data.raw
            check(dnnl_eltwise_forward_desc_init(&f, dnnl_forward_training, dnnl_eltwise_relu_use_dst_for_bwd, &md, 0, 0), "eltwise_fwd")
            let hint = makePD(&f)!
            defer { dnnl_primitive_desc_destroy(hint) }
            var d = dnnl_eltwise_desc_t()
            var dd = diff.raw
            check(dnnl_eltwise_backward_desc_init(&d, dnnl_eltwise_relu_use_dst_for_bwd, &dd, &md, 0, 0), "eltwise_bwd")
            return Primitive(pd: makePD(&d, hint: hint)!)
        }
    }

    /// `dst = src0 + src1`, then ReLU when `relu` is set; all three in the same layout.
    public static func add(_ data: MemoryDesc, relu: Bool) -> Primitive {
        PrimitiveCache.get(PrimitiveKey(op: "add", descs: [data], ints: [relu ? 1 : 0])) {
            var d = dnnl_binary_desc_t()
            var a = data.raw, b = data.raw, c = data.raw
            check(dnnl_binary_desc_init(&d, dnnl_binary_add, &a, &b, &c), "binary_desc_init")
            var attr: dnnl_primitive_attr_t?
            if relu {
                check(dnnl_primitive_attr_create(&attr), "attr_create")
                var ops: dnnl_post_ops_t?
                check(dnnl_post_ops_create(&ops), "post_ops_create")
                check(dnnl_post_ops_append_eltwise(ops, 1, dnnl_eltwise_relu, 0, 0), "post_ops_append_eltwise")
                check(dnnl_primitive_attr_set_post_ops(attr, ops), "attr_set_post_ops")
                dnnl_post_ops_destroy(ops)
            }
            defer { if let attr { dnnl_primitive_attr_destroy(attr) } }
            return Primitive(pd: makePD(&d, attr: attr)!)
        }
    }

    /// Copies between two layouts of the same logical tensor.
    public static func reorder(from src: MemoryDesc, to dst: MemoryDesc) -> Primitive {
        PrimitiveCache.get(PrimitiveKey(op: "reorder", descs: [src, dst], ints: [])) {
            var pd: dnnl_primitive_desc_t?
            var a = src.raw, b = dst.raw
            let e = DNNLContext.shared.engine
            check(dnnl_reorder_primitive_desc_create(&pd, &a, e, &b, e, nil), "reorder_pd \(src.dims)")
            return Primitive(pd: pd!)
        }
    }

    /// Reorders `src` (layout `from`) into `dst` (layout `to`).
    public static func reorder(_ src: UnsafeMutableRawPointer, from: MemoryDesc, into dst: UnsafeMutableRawPointer, to: MemoryDesc) {
        reorder(from: from, to: to).execute([(.from, from, src), (.to, to, dst)])
    }
}
