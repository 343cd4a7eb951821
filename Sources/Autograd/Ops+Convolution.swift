import Kernels

/// 2-D convolution: `x` `N x C x H x W`, `weight` `O x C x k x k` (row-major, as PyTorch stores it),
/// optional `bias` `O`. The output stays in the layout oneDNN chose. Under `Autocast` bf16 the
/// input and weights are cast to bf16 and the output is bf16; the weight gradient is fp32.
public func conv2d(_ x: Tensor, _ weight: Tensor, bias: Tensor? = nil, stride: Int = 1, padding: Int = 0) -> Tensor {
    precondition(x.shape.count == 4 && weight.shape.count == 4, "conv2d wants 4-D input and weight, got \(x.shape), \(weight.shape)")
    precondition(weight.shape[1] == x.shape[1], "conv2d: weight has \(weight.shape[1]) input channels, input has \(x.shape[1])")
    precondition(weight.shape[2] == weight.shape[3], "conv2d: square kernels only")
    let s = ConvShape(batch: x.shape[0], inChannels: x.shape[1], height: x.shape[2], width: x.shape[3],
                      outChannels: weight.shape[0], kernel: weight.shape[2], stride: stride, padding: padding,
                      hasBias: bias != nil, dataType: Autocast.computeType)
    let training = Tensor.needsGrad(x, weight, bias)
    let fwd = Convolution.forward(s, src: x.desc, training: training)
    let srcMD = fwd.md(.src), wMD = fwd.md(.weights), dstMD = fwd.md(.dst)
    let xin = x.reorderedRaw(to: srcMD)
    let w = Autocast.weight(weight, as: wMD)
    let out = Buffer(byteCount: dstMD.byteCount)
    var args: [(Arg, MemoryDesc, UnsafeMutableRawPointer)] = [
        (.src, srcMD, xin.buffer.pointer), (.weights, wMD, w.buffer.pointer), (.dst, dstMD, out.pointer),
    ]
    if let bias { args.append((.bias, bias.desc, bias.buffer.pointer)) }
    fwd.execute(args)

    return Tensor.result(shape: s.dstDims, desc: dstMD, buffer: out, inputs: [x, weight] + (bias.map { [$0] } ?? [])) { gy in
        var gx: Tensor?
        if x.requiresGrad {
            let bwd = Convolution.backwardData(s, diffSrc: x.desc, diffDst: gy.desc, forward: fwd)
            let dyMD = bwd.md(.diffDst), dxMD = bwd.md(.diffSrc), bwMD = bwd.md(.weights)
            let dy = gy.reorderedRaw(to: dyMD)
            let wb = w.reorderedRaw(to: bwMD)
            let dx = Buffer(byteCount: dxMD.byteCount)
            bwd.execute([(.diffDst, dyMD, dy.buffer.pointer), (.weights, bwMD, wb.buffer.pointer),
                         (.diffSrc, dxMD, dx.pointer)])
            gx = Tensor(shape: x.shape, desc: dxMD, buffer: dx).reorderedRaw(to: x.desc)
        }
        var gw: Tensor?, gb: Tensor?
        if weight.requiresGrad || bias?.requiresGrad == true {
            let bwd = Convolution.backwardWeights(s, src: xin.desc, diffDst: gy.desc, forward: fwd)
            let srcMD = bwd.md(.src), dyMD = bwd.md(.diffDst), dwMD = bwd.md(.diffWeights)
            let src = xin.reorderedRaw(to: srcMD)
            let dy = gy.reorderedRaw(to: dyMD)
            let dw = Buffer(byteCount: dwMD.byteCount)
            var args: [(Arg, MemoryDesc, UnsafeMutableRawPointer)] = [
                (.src, srcMD, src.buffer.pointer), (.diffDst, dyMD, dy.buffer.pointer),
                (.diffWeights, dwMD, dw.pointer),
            ]
            if let bias {
                let db = Buffer(byteCount: bias.desc.byteCount)
                args.append((.diffBias, bias.desc, db.pointer))
                gb = Tensor(shape: bias.shape, desc: bias.desc, buffer: db)
            }
            bwd.execute(args)
            gw = Tensor(shape: weight.shape, desc: dwMD, buffer: dw).reorderedRaw(to: weight.desc)
        }
        return [gx, gw] + (bias == nil ? [] : [gb])
    }
}
