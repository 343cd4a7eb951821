#!/usr/bin/env python3
"""PyTorch (fp32, CPU) SimCLR reference (Chen et al. 2020, Algorithm 1) for mocod's `simclr`
method, on the same spec: one ResNet with the projection head W2·ReLU(W1·h) as its fc, both
views as one batch of 2N, NT-Xent over the 2N views (each view's positive the other view of
its image, the self-similarity excluded), LARS, mocod's learning-rate schedule. The loop, data,
augmentation and kNN monitor are bench/torch_ssl.py's.

Usage: torch_simclr.py --config SPEC.json [--epochs N] [--width N] [--batch N] [--threads N]
       [--workers N] [--out DIR] [--data-dir DIR]
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

import torch_ssl


class SimCLR:
    def __init__(self, spec):
        mcfg = spec["model"]
        dim = mcfg.get("dim", 128)
        self.encoder = torch_ssl.make_backbone(mcfg)
        feat = self.encoder.fc.in_features
        hidden = feat if mcfg.get("mlp_hidden") is None else mcfg["mlp_hidden"]
        if hidden > 0:
            self.encoder.fc = nn.Sequential(nn.Linear(feat, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.t = float(spec["simclr"]["temperature"])

    def parameters(self):
        return list(self.encoder.parameters())

    def train(self):
        self.encoder.train()

    def step(self, x1, x2, progress):
        n = x1.shape[0]
        z = F.normalize(self.encoder(torch.cat([x1, x2])), dim=1)
        sim = (z @ z.t() / self.t).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
        return F.cross_entropy(sim, targets)

    def after_step(self):
        pass


def build(spec):
    m = SimCLR(spec)
    return m, m.encoder


if __name__ == "__main__":
    torch_ssl.main(build, "torch SimCLR")
