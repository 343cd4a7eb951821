#!/usr/bin/env python3
"""PyTorch (fp32, CPU) reference timing for one MoCo v2-shaped training step.

Usage:
  torch_step.py --arch resnet18 --stem cifar --width 64 --batch 256 \
      --channels 1 --size 28 --threads 2 [--queue 4096] [--steps 5] [--warmup 2]
  torch_step.py --gemm --threads 2 [--gemm-seconds 2.0]

Prints exactly one JSON line on stdout (see README of the bench / compare.py).

This file also hosts `make_resnet`, a width-configurable ResNet builder that
reuses torchvision's BasicBlock / Bottleneck / conv1x1 and produces the same
state-dict key names and initialisation as torchvision's ResNet.
scripts/make_golden.py imports it from here.
"""
import argparse
import contextlib
import copy
import json
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet, conv1x1

ARCHS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class _WidthResNet(ResNet):
    """torchvision ResNet with configurable base width, input channels and stem.

    The constructor mirrors torchvision.models.resnet.ResNet.__init__ (same
    module creation order, so the same RNG consumption, same init); the forward
    pass is inherited unchanged.
    stem 'imagenet': conv1 7x7/2 pad 3 + maxpool 3x3/2 pad 1 (torchvision).
    stem 'cifar':    conv1 3x3/1 pad 1, maxpool = nn.Identity().
    """

    def __init__(self, block, layers, width=64, in_channels=3, stem="imagenet",
                 num_classes=1000):
        nn.Module.__init__(self)
        norm_layer = nn.BatchNorm2d
        self._norm_layer = norm_layer
        self.inplanes = width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64  # width_per_group: Bottleneck inner width == planes
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2,
                                   padding=3, bias=False)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=3, stride=1,
                                   padding=1, bias=False)
        else:
            raise ValueError(f"unknown stem {stem!r}")
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        if stem == "imagenet":
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


class SplitBatchNorm(nn.BatchNorm2d):
    """Exactly the MoCo CIFAR-10 demo's SplitBatchNorm: simulates multi-GPU BN on one device."""

    def __init__(self, num_features, num_splits, **kw):
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def forward(self, input):
        N, C, H, W = input.shape
        if self.training or not self.track_running_stats:
            running_mean_split = self.running_mean.repeat(self.num_splits)
            running_var_split = self.running_var.repeat(self.num_splits)
            outcome = nn.functional.batch_norm(
                input.view(-1, C * self.num_splits, H, W), running_mean_split, running_var_split,
                self.weight.repeat(self.num_splits), self.bias.repeat(self.num_splits),
                True, self.momentum, self.eps).view(N, C, H, W)
            self.running_mean.data.copy_(running_mean_split.view(self.num_splits, C).mean(dim=0))
            self.running_var.data.copy_(running_var_split.view(self.num_splits, C).mean(dim=0))
            return outcome
        else:
            return nn.functional.batch_norm(
                input, self.running_mean, self.running_var,
                self.weight, self.bias, False, self.momentum, self.eps)


def make_resnet(block, layers, width=64, in_channels=3, stem="imagenet", num_classes=1000):
    """Build a torchvision-compatible ResNet (same state-dict keys, same init)."""
    if isinstance(block, str):
        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
    return _WidthResNet(block, list(layers), width, in_channels, stem, num_classes)


def make_resnet_arch(arch, width=64, in_channels=3, stem="imagenet", num_classes=1000):
    block, layers = ARCHS[arch]
    return make_resnet(block, layers, width, in_channels, stem, num_classes)


def count_forward_flops(model, x):
    """2*MACs of every Conv2d and Linear in one forward of `x` (per whole batch).

    Conv bias adds, BN, ReLU, pooling and residual adds are not counted.
    """
    total = [0]

    def conv_hook(m, inp, out):
        kh, kw = m.kernel_size
        macs = out.numel() * (m.in_channels // m.groups) * kh * kw
        total[0] += 2 * macs

    def linear_hook(m, inp, out):
        total[0] += 2 * out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()  # a 1-image batch cannot use batch statistics at 1x1 spatial size
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total[0]


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_gemm(threads, seconds, n=2048, dtype="fp32"):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, n).to(t)
    b = torch.randn(n, n).to(t)
    c = torch.empty(n, n, dtype=t)
    torch.mm(a, b, out=c)  # warm-up
    iters = 0
    t0 = time.perf_counter()
    while True:
        torch.mm(a, b, out=c)
        iters += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    gflops = 2.0 * n ** 3 * iters / elapsed / 1e9
    return {"impl": "pytorch", "gemm_gflops_per_second": gflops, "threads": threads,
            "n": n, "iterations": iters, "seconds": elapsed, "precision": dtype}


def run_step_bench(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dim = 128
    T = 0.2
    K = args.queue
    if K % args.batch != 0:
        K = int(math.ceil(K / args.batch)) * args.batch

    encoder_q = make_resnet_arch(args.arch, args.width, args.channels, args.stem, num_classes=dim)
    dim_mlp = encoder_q.fc.weight.shape[1]
    encoder_q.fc = nn.Sequential(nn.Linear(dim_mlp, dim_mlp), nn.ReLU(), encoder_q.fc)
    encoder_k = copy.deepcopy(encoder_q)
    for p in encoder_k.parameters():
        p.requires_grad = False

    # FLOPs of one forward of one image (query and key encoders are identical).
    f_fwd = count_forward_flops(encoder_q, torch.randn(1, args.channels, args.size, args.size))
    flops_per_step = args.batch * (3 * f_fwd + f_fwd) + 2 * args.batch * dim * (K + 1) * 3

    encoder_q.train()
    encoder_k.train()

    queue = F.normalize(torch.randn(dim, K), dim=0)
    queue_ptr = 0
    optimizer = torch.optim.SGD(encoder_q.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    x_q = torch.randn(args.batch, args.channels, args.size, args.size)
    x_k = torch.randn(args.batch, args.channels, args.size, args.size)
    labels = torch.zeros(args.batch, dtype=torch.long)
    params_q = list(encoder_q.parameters())
    params_k = list(encoder_k.parameters())

    # --precision bf16: the forward under CPU autocast, as its users turn it on (parameters,
    # gradients, SGD, EMA and queue stay fp32).
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.precision == "bf16" \
        else contextlib.nullcontext

    def step():
        nonlocal queue_ptr
        with torch.no_grad():
            for p_q, p_k in zip(params_q, params_k):
                p_k.data.mul_(0.999).add_(p_q.data, alpha=0.001)
        with autocast():
            q = F.normalize(encoder_q(x_q), dim=1)
            with torch.no_grad():
                k = F.normalize(encoder_k(x_k), dim=1)
            l_pos = (q * k).sum(1, keepdim=True)
            l_neg = q @ queue
            logits = torch.cat([l_pos, l_neg], dim=1) / T
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            queue[:, queue_ptr:queue_ptr + args.batch] = k.T.float()
            queue_ptr = (queue_ptr + args.batch) % K
        return loss

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "impl": "pytorch",
        "arch": args.arch,
        "stem": args.stem,
        "width": args.width,
        "batch": args.batch,
        "channels": args.channels,
        "size": args.size,
        "threads": args.threads,
        "queue": K,
        "steps": args.steps,
        "warmup": args.warmup,
        "step_ms": med * 1e3,
        "images_per_second": args.batch / med,
        "peak_rss_mb": peak_rss_mb(),
        "gflops_per_second": flops_per_step / med / 1e9,
        "flops_per_step": flops_per_step,
        "loss": float(loss.detach()),
        "precision": args.precision,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18", choices=sorted(ARCHS))
    p.add_argument("--stem", default="cifar", choices=["cifar", "imagenet"])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--queue", type=int, default=4096)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--gemm", action="store_true",
                   help="time a 2048^3 fp32 torch.mm instead of the MoCo step")
    p.add_argument("--gemm-seconds", type=float, default=2.0)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: the step under torch.autocast('cpu', bfloat16); with --gemm, a bf16 torch.mm")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.gemm:
        out = run_gemm(args.threads, args.gemm_seconds, dtype=args.precision)
    else:
        if args.steps < 1:
            raise SystemExit("--steps must be >= 1")
        out = run_step_bench(args)
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
