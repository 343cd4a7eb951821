import Kernels

/// Max pooling over `k x k` windows (the ImageNet stem's 3x3, stride 2, padding 1).
public func maxPool2d(_ x: Tensor, kernel: Int, stride: Int, padding: Int = 0) -> Tensor {
    precondition(x.shape.count == 4, "maxPool2d wants N x C x H x W, got \(x.shape)")
    let s = PoolingKernel.Shape(kernel: kernel, stride: stride, padding: padding, max: true)
    let training = Tensor.needsGrad(x)
    let fwd = PoolingKernel.forward(s, src: x.desc, training: training)
    let dstMD = fwd.md(.dst)
    let out = Buffer(byteCount: dstMD.byteCount)
    var args: [(Arg, MemoryDesc, UnsafeMutableRawPointer)] = [(.src, x.desc, x.buffer.pointer), (.dst, dstMD, out.pointer)]
    let wsMD = training ? fwd.md(.workspace) : nil
    let ws = wsMD.map { Buffer(byteCount: $0.byteCount) }
    if let wsMD, let ws { args.append((.workspace, wsMD, ws.pointer)) }
    fwd.execute(args)
    return Tensor.result(shape: s.outDims(x.shape), desc: dstMD, buffer: out, inputs: [x]) { gy in
        let bwd = PoolingKernel.backward(s, diffSrc: x.desc, diffDst: dstMD, forward: fwd)
        let dy = gy.reorderedRaw(to: dstMD)
        let dx = Buffer(byteCount: x.desc.byteCount)
        bwd.execute([(.diffDst, dstMD, dy.buffer.pointer), (.diffSrc, x.desc, dx.pointer), (.workspace, wsMD!, ws!.pointer)])
        return [Tensor(shape: x.shape, desc: x.desc, buffer: dx)]
    }
}

/// Global average pooling: `N x C x H x W` to a row-major `N x C`.
public func globalAvgPool(_ x: Tensor) -> Tensor {
    precondition(x.shape.count == 4, "globalAvgPool wants N x C x H x W, got \(x.shape)")
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    precondition(h == w, "globalAvgPool: square maps only, got \(h)x\(w)")
    let s = PoolingKernel.Shape(kernel: h, stride: 1, padding: 0, max: false)
    let fwd = PoolingKernel.forward(s, src: x.desc, training: Tensor.needsGrad(x))
    let dstMD = fwd.md(.dst)
    let pooled = Buffer(byteCount: dstMD.byteCount)
    fwd.execute([(.src, x.desc, x.buffer.pointer), (.dst, dstMD, pooled.pointer)])
    let plainMD = MemoryDesc.plain([n, c, 1, 1])
    let out = Tensor(shape: [n, c, 1, 1], desc: dstMD, buffer: pooled).reorderedRaw(to: plainMD)
    return Tensor.result(shape: [n, c], desc: MemoryDesc.plain([n, c]), buffer: out.buffer, inputs: [x]) { gy in
        let bwd = PoolingKernel.backward(s, diffSrc: x.desc, diffDst: dstMD, forward: fwd)
        let dy = Tensor(shape: [n, c, 1, 1], desc: plainMD, buffer: gy.plain().buffer).reorderedRaw(to: dstMD)
        let dx = Buffer(byteCount: x.desc.byteCount)
        bwd.execute([(.diffDst, dstMD, dy.buffer.pointer), (.diffSrc, x.desc, dx.pointer)])
        return [Tensor(shape: x.shape, desc: x.desc, buffer: dx)]
    }
}
