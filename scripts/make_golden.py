#!/usr/bin/env python3
"""Generate golden fixtures for the mocod Swift tests.

Writes safetensors files into Tests/Fixtures/golden/ and reference model
state-dict listings into Tests/Fixtures/torchvision/models.json.

Conventions (all files):
  * float32 tensors (except integer targets, int64), computed in float32 on CPU.
  * `gy` is a random upstream gradient of the output's shape; gradients are
    obtained with y.backward(gy), i.e. loss = sum(y * gy).
  * metadata (string -> string) holds hyper-parameters plus "case",
    "generator" and "torch_version".
  * module fixtures: x, y, gy, gx, param.<state_dict key> (values before the
    forward, incl. running_mean/var, without num_batches_tracked),
    grad.<parameter name>, after.<buffer key> (running stats after the forward).

Run:  python scripts/make_golden.py   (from the repository root or anywhere)
"""
import contextlib
import copy
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from torch_step import SplitBatchNorm, make_resnet  # noqa: E402  (single source of truth)

GOLDEN = os.path.join(ROOT, "Tests", "Fixtures", "golden")
TV_DIR = os.path.join(ROOT, "Tests", "Fixtures", "torchvision")

BN_MOMENTUM = 0.1
BN_EPS = 1e-5


def meta(case, **kw):
    m = {"case": case, "generator": "scripts/make_golden.py", "torch_version": torch.__version__}
    for k, v in kw.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        m[k] = str(v)
    return m


def _canonicalize_header(path):
    """safetensors writes __metadata__ in hash-map order; rewrite the header with
    sorted metadata keys (same JSON, same length) so reruns are byte-identical."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
        header = json.loads(raw)
        md = header.pop("__metadata__", None)
        new = {}
        if md is not None:
            new["__metadata__"] = dict(sorted(md.items()))
        new.update(header)
        enc = json.dumps(new, separators=(",", ":")).encode()
        assert len(enc) <= n, path
        enc = enc + b" " * (n - len(enc))  # spaces are valid header padding
        f.seek(8)
        f.write(enc)


def save(name, tensors, metadata):
    out = {}
    for k, v in tensors.items():
        v = v.detach()
        if v.is_floating_point():
            assert v.dtype == torch.float32, (name, k, v.dtype)
        out[k] = v.contiguous().clone()
    path = os.path.join(GOLDEN, name)
    save_file(out, path, metadata=metadata)
    _canonicalize_header(path)
    # verify round trip
    back = load_file(path)
    assert set(back) == set(out), name
    for k in out:
        assert torch.equal(back[k], out[k]), (name, k)
    return path


def leaf(t):
    return t.detach().clone().requires_grad_(True)


# --------------------------------------------------------------------------- conv
def make_conv():
    cases = [
        ("k3s1p1", 101, (2, 3, 6, 6), (4, 3, 3, 3), False, 1, 1),
        ("k3s2p1_bias", 102, (2, 3, 7, 7), (5, 3, 3, 3), True, 2, 1),
        ("k1s2p0", 103, (2, 4, 6, 6), (6, 4, 1, 1), False, 2, 0),
        ("k7s2p3", 104, (1, 2, 11, 11), (4, 2, 7, 7), False, 2, 3),
    ]
    for name, seed, xs, ws, has_bias, stride, pad in cases:
        torch.manual_seed(seed)
        x = leaf(torch.randn(xs))
        w = leaf(torch.randn(ws) * 0.5)
        b = leaf(torch.randn(ws[0])) if has_bias else None
        y = F.conv2d(x, w, b, stride=stride, padding=pad)
        gy = torch.randn_like(y)
        y.backward(gy)
        t = {"x": x, "w": w, "y": y, "gy": gy, "gx": x.grad, "gw": w.grad}
        if has_bias:
            t["b"] = b
            t["gb"] = b.grad
        save(f"conv2d_{name}.safetensors", t,
             meta(f"conv2d_{name}", stride=stride, padding=pad, bias=has_bias,
                  kernel=ws[2], dilation=1, groups=1))


# --------------------------------------------------------------------------- batch norm
def make_bn():
    def bn_case(seed, xshape, training):
        torch.manual_seed(seed)
        C = xshape[1]
        x = leaf(torch.randn(xshape) * 1.5 + 0.3)
        weight = leaf(torch.rand(C) + 0.5)
        bias = leaf(torch.randn(C) * 0.5)
        rm = torch.randn(C) * 0.5
        rv = torch.rand(C) + 0.5
        rm0, rv0 = rm.clone(), rv.clone()
        y = F.batch_norm(x, rm, rv, weight, bias, training=training,
                         momentum=BN_MOMENTUM, eps=BN_EPS)
        gy = torch.randn_like(y)
        y.backward(gy)
        t = {"x": x, "weight": weight, "bias": bias, "running_mean": rm0, "running_var": rv0,
             "y": y, "gy": gy, "gx": x.grad, "gweight": weight.grad, "gbias": bias.grad}
        if training:
            t["running_mean_after"] = rm
            t["running_var_after"] = rv
        else:
            assert torch.equal(rm, rm0) and torch.equal(rv, rv0)
        return t

    common = dict(momentum=BN_MOMENTUM, eps=BN_EPS, running_var_update="unbiased")
    save("bn_train.safetensors", bn_case(201, (4, 3, 5, 5), True),
         meta("bn_train", training=True, **common))
    save("bn1d_train.safetensors", bn_case(202, (6, 5), True),
         meta("bn1d_train", training=True, **common))
    save("bn_eval.safetensors", bn_case(203, (4, 3, 5, 5), False),
         meta("bn_eval", training=False, momentum=BN_MOMENTUM, eps=BN_EPS))


def make_split_bn():
    torch.manual_seed(301)
    C, S = 4, 2
    m = SplitBatchNorm(C, num_splits=S)
    with torch.no_grad():
        m.weight.copy_(torch.rand(C) + 0.5)
        m.bias.copy_(torch.randn(C) * 0.5)
        m.running_mean.copy_(torch.randn(C) * 0.5)
        m.running_var.copy_(torch.rand(C) + 0.5)
    m.train()
    before = {k: v.detach().clone() for k, v in m.state_dict().items()}
    x = leaf(torch.randn(8, C, 3, 3) * 1.5 + 0.3)
    y = m(x)
    gy = torch.randn_like(y)
    y.backward(gy)
    t = {"x": x, "weight": before["weight"], "bias": before["bias"],
         "running_mean": before["running_mean"], "running_var": before["running_var"],
         "y": y, "running_mean_after": m.running_mean, "running_var_after": m.running_var,
         "gy": gy, "gx": x.grad, "gweight": m.weight.grad, "gbias": m.bias.grad}
    save("split_bn.safetensors", t,
         meta("split_bn", num_splits=S, momentum=m.momentum, eps=m.eps, training=True,
              split_layout="input.view(-1, C*num_splits, H, W): sample n belongs to split n % num_splits"))


# --------------------------------------------------------------------------- misc ops
def make_ops():
    t = {}
    # maxpool 3x3 s2 p1
    torch.manual_seed(401)
    x = leaf(torch.randn(2, 3, 9, 9))
    y = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    gy = torch.randn_like(y)
    y.backward(gy)
    t.update({"maxpool.x": x, "maxpool.y": y, "maxpool.gy": gy, "maxpool.gx": x.grad})
    # global average pool + flatten
    torch.manual_seed(402)
    x = leaf(torch.randn(2, 3, 4, 4))
    y = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
    gy = torch.randn_like(y)
    y.backward(gy)
    t.update({"avgpool.x": x, "avgpool.y": y, "avgpool.gy": gy, "avgpool.gx": x.grad})
    # linear
    torch.manual_seed(403)
    x = leaf(torch.randn(4, 6))
    w = leaf(torch.randn(5, 6) * 0.5)
    b = leaf(torch.randn(5))
    y = F.linear(x, w, b)
    gy = torch.randn_like(y)
    y.backward(gy)
    t.update({"linear.x": x, "linear.w": w, "linear.b": b, "linear.y": y, "linear.gy": gy,
              "linear.gx": x.grad, "linear.gw": w.grad, "linear.gb": b.grad})
    # l2 normalize along dim 1
    torch.manual_seed(404)
    x = leaf(torch.randn(4, 7))
    y = F.normalize(x, dim=1)
    gy = torch.randn_like(y)
    y.backward(gy)
    t.update({"l2norm.x": x, "l2norm.y": y, "l2norm.gy": gy, "l2norm.gx": x.grad})
    # cross entropy (mean)
    torch.manual_seed(405)
    logits = leaf(torch.randn(5, 9) * 2.0)
    target = torch.randint(0, 9, (5,), dtype=torch.int64)
    loss = F.cross_entropy(logits, target)
    loss.backward()
    t.update({"ce.logits": logits, "ce.target": target, "ce.loss": loss.detach().reshape(1),
              "ce.glogits": logits.grad})
    # relu
    torch.manual_seed(406)
    x = leaf(torch.randn(3, 4, 2, 2))
    y = F.relu(x)
    gy = torch.randn_like(y)
    y.backward(gy)
    t.update({"relu.x": x, "relu.y": y, "relu.gy": gy, "relu.gx": x.grad})
    # matmul
    torch.manual_seed(407)
    a = leaf(torch.randn(3, 4))
    b = leaf(torch.randn(4, 5))
    y = a @ b
    gy = torch.randn_like(y)
    y.backward(gy)
    t.update({"matmul.a": a, "matmul.b": b, "matmul.y": y, "matmul.gy": gy,
              "matmul.ga": a.grad, "matmul.gb": b.grad})
    save("ops.safetensors", t, meta(
        "ops",
        **{"maxpool.kernel": 3, "maxpool.stride": 2, "maxpool.padding": 1,
           "avgpool.mode": "adaptive_avg_pool2d(1)+flatten",
           "linear.formula": "y = x @ w.T + b",
           "l2norm.dim": 1, "l2norm.eps": 1e-12,
           "ce.reduction": "mean", "ce.upstream": 1.0,
           "matmul.formula": "y = a @ b"}))


# --------------------------------------------------------------------------- modules
def randomize_bn(module, gen_seed):
    g = torch.Generator().manual_seed(gen_seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                C = m.num_features
                m.weight.copy_(torch.rand(C, generator=g) + 0.5)
                m.bias.copy_(torch.randn(C, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(C, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(C, generator=g) + 0.5)


def module_fixture(module, x):
    module.train()
    state_before = {k: v.detach().clone() for k, v in module.state_dict().items()
                    if not k.endswith("num_batches_tracked")}
    x = leaf(x)
    y = module(x)
    gy = torch.randn_like(y)
    y.backward(gy)
    t = {"x": x, "y": y, "gy": gy, "gx": x.grad}
    for k, v in state_before.items():
        t[f"param.{k}"] = v
    for k, p in module.named_parameters():
        t[f"grad.{k}"] = p.grad
    for k, v in module.named_buffers():
        if k.endswith("running_mean") or k.endswith("running_var"):
            t[f"after.{k}"] = v
    return t


def make_blocks():
    torch.manual_seed(501)
    blk = BasicBlock(8, 16, stride=2, downsample=nn.Sequential(conv1x1(8, 16, 2), nn.BatchNorm2d(16)))
    randomize_bn(blk, 5011)
    t = module_fixture(blk, torch.randn(2, 8, 6, 6))
    save("basic_block.safetensors", t,
         meta("basic_block", block="BasicBlock", inplanes=8, planes=16, stride=2, downsample=True,
              training=True, momentum=BN_MOMENTUM, eps=BN_EPS))

    torch.manual_seed(502)
    blk = Bottleneck(8, 4, stride=2, downsample=nn.Sequential(conv1x1(8, 16, 2), nn.BatchNorm2d(16)))
    randomize_bn(blk, 5021)
    t = module_fixture(blk, torch.randn(2, 8, 6, 6))
    save("bottleneck.safetensors", t,
         meta("bottleneck", block="Bottleneck", inplanes=8, planes=4, expansion=4, stride=2,
              downsample=True, training=True, momentum=BN_MOMENTUM, eps=BN_EPS,
              stride_on="conv2 (3x3), torchvision v1.5"))


def check_make_resnet():
    ref = torchvision.models.resnet18()
    mine = make_resnet(BasicBlock, [2, 2, 2, 2], 64, 3, "imagenet", 1000)
    rs, ms = ref.state_dict(), mine.state_dict()
    assert list(rs) == list(ms), "make_resnet key mismatch vs torchvision resnet18"
    for k in rs:
        assert rs[k].shape == ms[k].shape, k
    nref = sum(p.numel() for p in ref.parameters())
    nmine = sum(p.numel() for p in mine.parameters())
    assert nref == nmine, (nref, nmine)
    # same construction order => same init for the same seed
    torch.manual_seed(7)
    ref = torchvision.models.resnet50()
    torch.manual_seed(7)
    mine = make_resnet(Bottleneck, [3, 4, 6, 3], 64, 3, "imagenet", 1000)
    rs, ms = ref.state_dict(), mine.state_dict()
    assert list(rs) == list(ms)
    for k in rs:
        assert torch.equal(rs[k], ms[k]), f"init differs at {k}"
    return nref


def make_resnet_fixture():
    torch.manual_seed(601)
    net = make_resnet(BasicBlock, [2, 2, 2, 2], 16, 3, "cifar", 10)
    randomize_bn(net, 6011)
    t = module_fixture(net, torch.randn(2, 3, 16, 16))
    save("resnet18_cifar_w16.safetensors", t,
         meta("resnet18_cifar_w16", arch="resnet18", stem="cifar", width=16, in_channels=3,
              num_classes=10, training=True, momentum=BN_MOMENTUM, eps=BN_EPS,
              bn_randomized=True))


# --------------------------------------------------------------------------- bf16 autocast
def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def make_autocast():
    """Ops and a ResNet under torch.autocast("cpu", bfloat16): inputs and parameters fp32, the
    outputs and input gradients as autocast leaves them (bf16, stored here as float32), parameter
    gradients fp32. Also the fp32 results of the same computation (`fp32.*`), so that a test can
    tell how far bf16 rounding moves them."""
    torch.manual_seed(801)
    x = leaf(torch.randn(4, 16, 8, 8))
    w = leaf(torch.randn(32, 16, 3, 3) * 0.1)
    with autocast():
        y = F.conv2d(x, w, None, stride=1, padding=1)
    assert y.dtype == torch.bfloat16
    gy = torch.randn(y.shape)
    y.backward(gy)
    t = {"x": x, "w": w, "y": y.float(), "gy": gy, "gx": x.grad.float(), "gw": w.grad.float()}
    x32, w32 = leaf(x), leaf(w)
    y32 = F.conv2d(x32, w32, None, stride=1, padding=1)
    y32.backward(gy)
    t.update({"fp32.y": y32, "fp32.gx": x32.grad, "fp32.gw": w32.grad})
    save("autocast_conv2d.safetensors", t, meta("autocast_conv2d", stride=1, padding=1, dtype="bfloat16"))

    torch.manual_seed(802)
    x = leaf(torch.randn(16, 64))
    w = leaf(torch.randn(32, 64) * 0.1)
    b = leaf(torch.randn(32) * 0.1)
    with autocast():
        y = F.linear(x, w, b)
    assert y.dtype == torch.bfloat16
    gy = torch.randn(y.shape)
    y.backward(gy)
    t = {"x": x, "w": w, "b": b, "y": y.float(), "gy": gy, "gx": x.grad.float(), "gw": w.grad.float(), "gb": b.grad.float()}
    save("autocast_linear.safetensors", t, meta("autocast_linear", dtype="bfloat16"))

    torch.manual_seed(601)
    net = make_resnet(BasicBlock, [2, 2, 2, 2], 8, 3, "cifar", 10)
    randomize_bn(net, 6011)
    ref = copy.deepcopy(net)
    x = torch.randn(16, 3, 32, 32)
    gy = torch.randn(16, 10)

    def run(module, lowp):
        module.train()
        before = {k: v.detach().clone() for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
        xl = leaf(x)
        with (autocast() if lowp else contextlib.nullcontext()):
            y = module(xl)
        y.backward(gy)
        out = {"x": xl, "y": y.float(), "gy": gy, "gx": xl.grad.float()}
        out.update({f"param.{k}": v for k, v in before.items()})
        out.update({f"grad.{k}": p.grad.float() for k, p in module.named_parameters()})
        out.update({f"after.{k}": v for k, v in module.named_buffers() if k.endswith(("running_mean", "running_var"))})
        return out

    t = run(net, True)
    r = run(ref, False)
    t.update({f"fp32.{k}": v for k, v in r.items() if k in ("y", "gx") or k.startswith("grad.")})
    save("autocast_resnet18_cifar_w8.safetensors", t,
         meta("autocast_resnet18_cifar_w8", arch="resnet18", stem="cifar", width=8, in_channels=3,
              num_classes=10, training=True, momentum=BN_MOMENTUM, eps=BN_EPS, bn_randomized=True, dtype="bfloat16"))


# --------------------------------------------------------------------------- sgd
def make_sgd():
    torch.manual_seed(701)
    lr, mom, wd = 0.1, 0.9, 1e-4
    p0 = nn.Parameter(torch.randn(5, 4))
    p1 = nn.Parameter(torch.randn(3))
    t = {"p0.init": p0.detach().clone(), "p1.init": p1.detach().clone()}
    opt = torch.optim.SGD([p0, p1], lr=lr, momentum=mom, weight_decay=wd)
    for i in range(3):
        g0, g1 = torch.randn(5, 4), torch.randn(3)
        p0.grad, p1.grad = g0.clone(), g1.clone()
        t[f"p0.grad.{i}"], t[f"p1.grad.{i}"] = g0, g1
        opt.step()
        t[f"p0.after.{i}"] = p0.detach().clone()
        t[f"p1.after.{i}"] = p1.detach().clone()
    save("sgd.safetensors", t, meta("sgd", lr=lr, momentum=mom, weight_decay=wd, dampening=0.0,
                                     nesterov=False, steps=3))


# --------------------------------------------------------------------------- lars
from torch_ssl import LARS  # noqa: E402  (MoCo v3's LARS, verbatim: one copy for the golden values and the reference)


def make_lars():
    """Three LARS steps on a weight (2-D, adapted), a bias (1-D, not) and a zero weight (trust
    ratio 1), with a learning rate that changes between steps as a schedule would."""
    torch.manual_seed(702)
    lrs, mom, wd, eta = [0.3, 0.25, 0.1], 0.9, 1e-6, 0.001
    ps = [nn.Parameter(torch.randn(6, 5)), nn.Parameter(torch.randn(4)), nn.Parameter(torch.zeros(3, 2))]
    t = {f"p{i}.init": p.detach().clone() for i, p in enumerate(ps)}
    opt = LARS(ps, lr=lrs[0], weight_decay=wd, momentum=mom, trust_coefficient=eta)
    for step, lr in enumerate(lrs):
        for g in opt.param_groups:
            g["lr"] = lr
        for i, p in enumerate(ps):
            p.grad = torch.randn_like(p) * (10.0 if i == 0 else 1.0)
            t[f"p{i}.grad.{step}"] = p.grad.clone()
        opt.step()
        for i, p in enumerate(ps):
            t[f"p{i}.after.{step}"] = p.detach().clone()
    save("lars.safetensors", t, meta("lars", lrs=",".join(map(str, lrs)), momentum=mom, weight_decay=wd,
                                      trust_coefficient=eta, steps=len(lrs)))


# --------------------------------------------------------------------------- method losses
def make_method_losses():
    """SimCLR's NT-Xent and MoCo v3's contrastive loss on fixed inputs, with their gradients
    (loss.backward(); the loss is a scalar)."""
    torch.manual_seed(703)
    n, d, tau = 6, 5, 0.5
    z1, z2 = torch.randn(n, d, requires_grad=True), torch.randn(n, d, requires_grad=True)
    # NT-Xent as the SimCLR paper defines it: 2N views, the self-similarity excluded.
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / tau
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    ntxent = F.cross_entropy(sim, targets)
    ntxent.backward()
    t = {"ntxent.z1": z1.detach().clone(), "ntxent.z2": z2.detach().clone(), "ntxent.loss": ntxent.detach().reshape(()),
         "ntxent.gz1": z1.grad.clone(), "ntxent.gz2": z2.grad.clone()}

    # MoCo v3 (moco-v3/moco/builder.py contrastive_loss), one process and a rank's block of a
    # gathered key batch (offset = N * rank).
    tau3 = 0.2
    def v3(q, k, offset):
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        logits = torch.einsum('nc,mc->nm', [q, k]) / tau3
        labels = torch.arange(q.shape[0], dtype=torch.long) + offset
        return F.cross_entropy(logits, labels) * (2 * tau3)
    q1, q2 = torch.randn(n, d, requires_grad=True), torch.randn(n, d, requires_grad=True)
    k1, k2 = torch.randn(n, d, requires_grad=True), torch.randn(n, d, requires_grad=True)
    sym = v3(q1, k2, 0) + v3(q2, k1, 0)
    sym.backward()
    t.update({"v3.q1": q1.detach().clone(), "v3.q2": q2.detach().clone(), "v3.k1": k1.detach().clone(),
              "v3.k2": k2.detach().clone(), "v3.loss": sym.detach().reshape(()), "v3.gq1": q1.grad.clone(),
              "v3.gq2": q2.grad.clone(), "v3.gk1": k1.grad.clone(), "v3.gk2": k2.grad.clone()})
    qb = torch.randn(3, d, requires_grad=True)
    kall = torch.randn(2 * 3, d, requires_grad=True)
    block = v3(qb, kall, 3)
    block.backward()
    t.update({"v3block.q": qb.detach().clone(), "v3block.k": kall.detach().clone(), "v3block.loss": block.detach().reshape(()),
              "v3block.gq": qb.grad.clone(), "v3block.gk": kall.grad.clone()})
    save("method_losses.safetensors", t, meta("method_losses", ntxent_temperature=tau, v3_temperature=tau3, n=n, d=d,
                                                v3block_offset=3))


# --------------------------------------------------------------------------- torchvision lists
def sd_listing(model):
    return {
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "state_dict": [[k, list(v.shape), str(v.dtype).replace("torch.", "")]
                       for k, v in model.state_dict().items()],
    }


def make_models_json():
    out = {}
    for name in ["resnet18", "resnet34", "resnet50"]:
        out[name] = sd_listing(getattr(torchvision.models, name)())
    out["resnet18_cifar_w32_in1"] = sd_listing(make_resnet(BasicBlock, [2, 2, 2, 2], 32, 1, "cifar", 128))
    out["resnet18_cifar_w32_in1"]["builder"] = "make_resnet(BasicBlock,[2,2,2,2],width=32,in_channels=1,stem='cifar',num_classes=128)"
    with open(os.path.join(TV_DIR, "models.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


def main():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    os.makedirs(GOLDEN, exist_ok=True)
    os.makedirs(TV_DIR, exist_ok=True)
    check_make_resnet()
    make_conv()
    make_bn()
    make_split_bn()
    make_ops()
    make_blocks()
    make_resnet_fixture()
    make_sgd()
    make_lars()
    make_method_losses()
    make_autocast()
    make_models_json()
    total = 0
    for d in (GOLDEN, TV_DIR):
        for f in sorted(os.listdir(d)):
            s = os.path.getsize(os.path.join(d, f))
            total += s
            print(f"{os.path.relpath(os.path.join(d, f), ROOT)}\t{s}")
    print(f"total\t{total}")


if __name__ == "__main__":
    if len(sys.argv) > 1:   # only the named cases, e.g. make_lars make_method_losses
        torch.set_num_threads(min(2, torch.get_num_threads()))
        for name in sys.argv[1:]:
            globals()[name]()
    else:
        main()
