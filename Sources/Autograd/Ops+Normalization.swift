import Kernels

/// Batch normalization over the batch (and spatial) axes of `x` (`N x C` or `N x C x H x W`).
///
/// - `training`: normalize with the batch statistics and update `runningMean`/`runningVar` in place
///   with PyTorch's semantics (`r = (1 - momentum) * r + momentum * stat`, the variance unbiased);
///   otherwise normalize with the running statistics.
/// - `groups` > 1 is split BN: statistics over `groups` equal sub-batches, each of `N / groups`
///   consecutive samples; the running statistics move by the mean of the groups' updates, as the
///   MoCo CIFAR demo's `SplitBatchNorm`. (The demo's `view(-1, C*G, H, W)` interleaves samples into
///   groups, `n % G`; after the random shuffle of shuffle BN the two groupings are the same thing.)
/// - `fuseReLU` applies ReLU in the same pass (forward and backward).
public func batchNorm(_ x: Tensor, weight: Tensor, bias: Tensor, runningMean: Tensor, runningVar: Tensor,
                      training: Bool, momentum: Float = 0.1, epsilon: Float = 1e-5, groups: Int = 1,
                      fuseReLU: Bool = false) -> Tensor {
    let n = x.shape[0], c = x.shape[1]
    precondition(x.shape.count == 2 || x.shape.count == 4, "batchNorm wants N x C or N x C x H x W, got \(x.shape)")
    precondition(weight.shape == [c] && bias.shape == [c] && runningMean.shape == [c] && runningVar.shape == [c])
    precondition(groups >= 1 && (!training || n % groups == 0), "batch \(n) does not split into \(groups) equal groups")
    let needsGrad = Tensor.needsGrad(x, weight, bias)
    let mode: BatchNormKernel.Mode = training ? .batchStats : (needsGrad ? .globalStatsTrainable : .inference)
    let g = training ? groups : 1
    let per = n / g
    let spatial = x.shape.dropFirst(2).reduce(1, *)
    if training { precondition(per * spatial > 1, "batch norm in training needs more than one value per channel") }

    let sub = g == 1 ? x.desc : x.desc.batchSlice(per)
    precondition(sub.byteCount * g == x.desc.byteCount, "layout of \(x.shape) does not keep the batch outermost")
    let fwd = BatchNormKernel.forward(data: sub, epsilon: epsilon, mode: mode, fuseReLU: fuseReLU)
    let wsMD: MemoryDesc? = fuseReLU && mode != .inference ? fwd.md(.workspace) : nil
    let groupBytes = sub.byteCount
    let out = Buffer(byteCount: x.desc.byteCount)
    let workspace = wsMD.map { Buffer(byteCount: $0.byteCount * g) }
    let cDesc = MemoryDesc.plain([c])
    // Per-group statistics: batch statistics in training, else the running ones.
    let means = training ? Buffer(byteCount: 4 * c * g) : runningMean.buffer
    let vars = training ? Buffer(byteCount: 4 * c * g) : runningVar.buffer
    for k in 0..<g {
        var args: [(Arg, MemoryDesc, UnsafeMutableRawPointer)] = [
            (.src, sub, x.buffer.pointer + k * groupBytes), (.dst, sub, out.pointer + k * groupBytes),
            (.scale, cDesc, weight.buffer.pointer), (.shift, cDesc, bias.buffer.pointer),
            (.mean, cDesc, means.pointer + (training ? 4 * c * k : 0)),
            (.variance, cDesc, vars.pointer + (training ? 4 * c * k : 0)),
        ]
        if let wsMD, let workspace { args.append((.workspace, wsMD, workspace.pointer + k * wsMD.byteCount)) }
        fwd.execute(args)
    }
    if training {
        // Running statistics: the mean over groups of each group's PyTorch update.
        let count = Float(per * spatial)
        let unbias = count / max(count - 1, 1)
        means.withUnsafeFloats { m in
            vars.withUnsafeFloats { v in
                runningMean.withUnsafeMutableFloats { rm in
                    runningVar.withUnsafeMutableFloats { rv in
                        for ch in 0..<c {
                            var sm: Float = 0, sv: Float = 0
                            for k in 0..<g { sm += m[k * c + ch]; sv += v[k * c + ch] }
                            rm[ch] = (1 - momentum) * rm[ch] + momentum * sm / Float(g)
                            rv[ch] = (1 - momentum) * rv[ch] + momentum * unbias * sv / Float(g)
                        }
                    }
                }
            }
        }
    }

    return Tensor.result(shape: x.shape, desc: x.desc, buffer: out, inputs: [x, weight, bias]) { gy in
        let dy = gy.reorderedRaw(to: x.desc)
        let bwd = BatchNormKernel.backward(data: sub, diff: sub, epsilon: epsilon, mode: mode, fuseReLU: fuseReLU, forward: fwd)
        let dx = Buffer(byteCount: x.desc.byteCount)
        let dScale = Buffer(byteCount: 4 * c * g), dShift = Buffer(byteCount: 4 * c * g)
        for k in 0..<g {
            var args: [(Arg, MemoryDesc, UnsafeMutableRawPointer)] = [
                (.src, sub, x.buffer.pointer + k * groupBytes), (.diffDst, sub, dy.buffer.pointer + k * groupBytes),
                (.diffSrc, sub, dx.pointer + k * groupBytes),
                (.scale, cDesc, weight.buffer.pointer), (.shift, cDesc, bias.buffer.pointer),
                (.mean, cDesc, means.pointer + (training ? 4 * c * k : 0)),
                (.variance, cDesc, vars.pointer + (training ? 4 * c * k : 0)),
                (.diffScale, cDesc, dScale.pointer + 4 * c * k), (.diffShift, cDesc, dShift.pointer + 4 * c * k),
            ]
            if let wsMD, let workspace { args.append((.workspace, wsMD, workspace.pointer + k * wsMD.byteCount)) }
            bwd.execute(args)
        }
        let gw = Tensor(uninitialized: [c]), gb = Tensor(uninitialized: [c])
        dScale.withUnsafeFloats { ds in
            dShift.withUnsafeFloats { dh in
                gw.withUnsafeMutableFloats { fw in
                    gb.withUnsafeMutableFloats { fb in
                        for ch in 0..<c {
                            var a: Float = 0, b: Float = 0
                            for k in 0..<g { a += ds[k * c + ch]; b += dh[k * c + ch] }
                            fw[ch] = a
                            fb[ch] = b
                        }
                    }
                }
            }
        }
        return [Tensor(shape: x.shape, desc: x.desc, buffer: dx), gw, gb]
    }
}
