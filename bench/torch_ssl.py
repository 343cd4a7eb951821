#!/usr/bin/env python3
"""Shared PyTorch (fp32, CPU) training loop for the method references (bench/torch_simclr.py,
bench/torch_moco_v3.py): the same JSON job spec as mocod, IDX data, aug+ two-view loader and
weighted-kNN monitor of bench/torch_moco.py, LARS as MoCo v3's code has it, and the learning
rate mocod computes (lr x batch/256 under linear scaling; linear warm-up over warmup_epochs,
counted in steps, then the spec's schedule).

stdout: one JSON line per epoch {"epoch", "step", "loss", "lr", "images_per_second",
"epoch_seconds", "eval_seconds", "knn_top1", "wall_seconds", "peak_rss_mb"}, then a summary line
{"summary": true, "wall_seconds", "final_knn_top1", ...} (also to DIR/metrics.jsonl with --out).
"""
import argparse
import json
import math
import os
import random
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_moco import (TwoViewDataset, extract, knn_top1, load_split, log,  # noqa: E402
                        make_augmentation, to_normalized_tensor)
from torch_step import make_resnet_arch  # noqa: E402


class LARS(torch.optim.Optimizer):
    """LARS optimizer, no rate scaling or weight decay for parameters <= 1D (moco-v3/optimizer.py)."""

    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, trust_coefficient=0.001):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g['params']:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim > 1:  # if not normalization gamma/beta or bias
                    dp = dp.add(p, alpha=g['weight_decay'])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.,
                                    torch.where(update_norm > 0, (g['trust_coefficient'] * param_norm / update_norm), one),
                                    one)
                    dp = dp.mul(q)
                param_state = self.state[p]
                if 'mu' not in param_state:
                    param_state['mu'] = torch.zeros_like(p)
                mu = param_state['mu']
                mu.mul_(g['momentum']).add_(dp)
                p.add_(mu, alpha=-g['lr'])


def make_backbone(mcfg):
    """torchvision's ResNet at the spec's arch, width, channels and stem; `fc` is replaced by the caller."""
    return make_resnet_arch(mcfg.get("arch", "resnet18"), mcfg.get("width", 64), mcfg.get("in_channels", 1),
                            mcfg.get("stem", "cifar"), num_classes=mcfg.get("dim", 128))


def learning_rate(ocfg, epoch, step, steps_per_epoch):
    """mocod's rate at (epoch, step within it): JobSpec.effectiveLearningRate and LearningRateSchedule."""
    base = ocfg["lr"] * (ocfg["batch_size"] / 256 if ocfg.get("lr_scaling", "linear") == "linear" else 1)
    epochs, warmup = ocfg["epochs"], ocfg.get("warmup_epochs", 0)
    done = epoch * steps_per_epoch + step
    if done < warmup * steps_per_epoch:
        return base * (done + 1) / (warmup * steps_per_epoch)
    schedule = ocfg.get("schedule", "cosine")
    if schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    if schedule == "cosine_step":
        return base * 0.5 * (1 + math.cos(math.pi * (epoch + step / steps_per_epoch) / epochs))
    if schedule == "step":
        return base * 0.1 ** sum(epoch >= m for m in ocfg.get("milestones", [120, 160]))
    return base


def make_optimizer(ocfg, params):
    if ocfg.get("optimizer", "lars") == "lars":
        return LARS(params, lr=0, weight_decay=ocfg.get("weight_decay", 1e-6), momentum=ocfg.get("momentum", 0.9),
                    trust_coefficient=ocfg.get("trust_coefficient", 0.001))
    return torch.optim.SGD(params, lr=0, momentum=ocfg.get("momentum", 0.9), weight_decay=ocfg.get("weight_decay", 1e-4))


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(build, description, argv=None):
    """`build(spec)` returns (method, encoder): `method.step(x1, x2, progress)` returns the loss
    tensor (graph recorded) and does what precedes the backward pass; `method.after_step()` what
    follows the optimizer step; `method.parameters()` what the optimizer trains; `encoder` is the
    ResNet whose backbone features the kNN monitor reads."""
    t_start = time.perf_counter()
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True)
    p.add_argument("--epochs", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--limit", type=int)
    p.add_argument("--eval-limit", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out")
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    with open(args.config) as f:
        spec = json.load(f)
    config_dir = os.path.dirname(os.path.abspath(args.config))
    dcfg, mcfg, acfg, ocfg = dict(spec["data"]), dict(spec["model"]), dict(spec.get("augment", {})), dict(spec["optim"])
    ecfg = dict(spec["eval"]) if spec.get("eval") else None
    if args.epochs is not None:
        ocfg["epochs"] = args.epochs
    if args.width is not None:
        mcfg["width"] = args.width
    if args.batch is not None:
        ocfg["batch_size"] = args.batch
    if args.limit is not None:
        dcfg["limit"] = args.limit
    if args.eval_limit is not None and ecfg is not None:
        ecfg["limit"] = args.eval_limit
    spec.update({"data": dcfg, "model": mcfg, "augment": acfg, "optim": ocfg, "eval": ecfg})
    threads = args.threads if args.threads is not None else int(spec.get("threads") or 1)
    seed = int(spec.get("seed", 0) or 0)
    epochs, batch = int(ocfg["epochs"]), int(ocfg["batch_size"])
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    out = open(os.path.join(args.out, "metrics.jsonl"), "w") if args.out else None

    def emit(obj):
        line = json.dumps(obj)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    train_images, train_labels = load_split(dcfg, config_dir, args.data_dir)
    if acfg.get("mean") is None or acfg.get("std") is None:
        px = train_images.astype(np.float64) / 255.0
        mean, std = [float(px.mean())], [float(px.std())]
        del px
    else:
        mean, std = acfg["mean"], acfg["std"]
    size = int(acfg.get("size") or train_images.shape[1])
    dataset = TwoViewDataset(train_images, train_labels, make_augmentation(acfg.get("preset", "v2"), size, mean, std))
    gen = torch.Generator()
    gen.manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=args.workers,
                                         generator=gen, persistent_workers=args.workers > 0)
    steps_per_epoch = len(loader)
    method, encoder = build(spec)
    optimizer = make_optimizer(ocfg, method.parameters())
    log(f"{description}: {train_images.shape[0]} images, batch {batch}, {steps_per_epoch} steps/epoch, "
        f"{sum(p.numel() for p in method.parameters())} trainable parameters, threads {threads}")

    if ecfg is not None:
        eval_images, eval_labels = load_split(ecfg, config_dir, args.data_dir)
        classes = int(max(train_labels.max().item(), eval_labels.max().item())) + 1
        knn_k, knn_t = int(ecfg.get("knn_k", 200)), float(ecfg.get("knn_t", 0.1))
        bank_x, query_x = to_normalized_tensor(train_images, mean, std), to_normalized_tensor(eval_images, mean, std)
        every = ecfg.get("every_epochs") or 1

    step, final = 0, None
    for epoch in range(epochs):
        method.train()
        total, n, images = 0.0, 0, 0
        t0 = time.perf_counter()
        for i, ((x1, x2), _) in enumerate(loader):
            lr = learning_rate(ocfg, epoch, i, steps_per_epoch)
            for g in optimizer.param_groups:
                g["lr"] = lr
            loss = method.step(x1, x2, (epoch * steps_per_epoch + i) / (epochs * steps_per_epoch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            method.after_step()
            total += loss.item()
            n += 1
            images += x1.shape[0]
            step += 1
        seconds = time.perf_counter() - t0
        top1, eval_seconds = None, 0.0
        if ecfg is not None and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
            t1 = time.perf_counter()
            top1 = knn_top1(extract(encoder, bank_x), train_labels, extract(encoder, query_x), eval_labels, classes, knn_k, knn_t)
            eval_seconds = time.perf_counter() - t1
            final = top1
        emit({"epoch": epoch + 1, "step": step, "loss": total / max(n, 1), "lr": lr, "images_per_second": images / seconds,
              "epoch_seconds": seconds, "eval_seconds": eval_seconds, "knn_top1": top1,
              "wall_seconds": time.perf_counter() - t_start, "peak_rss_mb": peak_rss_mb()})
    emit({"summary": True, "wall_seconds": time.perf_counter() - t_start, "final_knn_top1": final,
          "train_images": int(train_images.shape[0]), "epochs": epochs, "batch": batch,
          "width": int(mcfg.get("width", 64)), "threads": threads, "workers": args.workers, "peak_rss_mb": peak_rss_mb()})
    if out:
        out.close()
