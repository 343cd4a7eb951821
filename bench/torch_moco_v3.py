#!/usr/bin/env python3
"""PyTorch (fp32, CPU) MoCo v3 reference for mocod's `moco_v3` method, on the same spec, as the
official code's MoCo_ResNet builds and trains it (moco-v3/moco/builder.py, main_moco.py): base
and momentum encoders with the projector _build_mlp(2, feat, mlp_hidden, dim) (Linear without
bias, BN, ReLU, Linear without bias, BN without affine), the predictor _build_mlp(2, dim,
mlp_hidden, dim, last_bn=False), the symmetric contrastive loss over in-batch keys scaled by 2τ,
the momentum 1 - (1 - m)(1 + cos(π·progress))/2 per step, LARS, mocod's learning-rate schedule.
The loop, data, augmentation and kNN monitor are bench/torch_ssl.py's.

Usage: torch_moco_v3.py --config SPEC.json [--epochs N] [--width N] [--batch N] [--threads N]
       [--workers N] [--out DIR] [--data-dir DIR]
"""
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import torch_ssl


def build_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn=True):
    mlp = []
    for l in range(num_layers):
        dim1 = input_dim if l == 0 else mlp_dim
        dim2 = output_dim if l == num_layers - 1 else mlp_dim
        mlp.append(nn.Linear(dim1, dim2, bias=False))
        if l < num_layers - 1:
            mlp.append(nn.BatchNorm1d(dim2))
            mlp.append(nn.ReLU(inplace=True))
        elif last_bn:
            mlp.append(nn.BatchNorm1d(dim2, affine=False))
    return nn.Sequential(*mlp)


class MoCoV3:
    def __init__(self, spec):
        mcfg, v3 = spec["model"], spec["moco_v3"]
        dim = mcfg.get("dim", 256)
        self.base_encoder = torch_ssl.make_backbone(mcfg)
        feat = self.base_encoder.fc.in_features
        mlp = mcfg.get("mlp_hidden") or feat
        self.base_encoder.fc = build_mlp(2, feat, mlp, dim)
        self.momentum_encoder = copy.deepcopy(self.base_encoder)
        for p in self.momentum_encoder.parameters():
            p.requires_grad = False
        self.predictor = build_mlp(2, dim, mlp, dim, False)
        self.m0, self.t = float(v3["momentum"]), float(v3["temperature"])

    def parameters(self):
        return list(self.base_encoder.parameters()) + list(self.predictor.parameters())

    def train(self):
        for m in (self.base_encoder, self.momentum_encoder, self.predictor):
            m.train()

    def contrastive_loss(self, q, k):
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        logits = torch.einsum('nc,mc->nm', [q, k]) / self.t
        labels = torch.arange(logits.shape[0], dtype=torch.long)
        return F.cross_entropy(logits, labels) * (2 * self.t)

    def step(self, x1, x2, progress):
        m = 1. - 0.5 * (1. + math.cos(math.pi * progress)) * (1. - self.m0)
        q1 = self.predictor(self.base_encoder(x1))
        q2 = self.predictor(self.base_encoder(x2))
        with torch.no_grad():
            for pb, pm in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
                pm.data = pm.data * m + pb.data * (1. - m)
            k1 = self.momentum_encoder(x1)
            k2 = self.momentum_encoder(x2)
        return self.contrastive_loss(q1, k2) + self.contrastive_loss(q2, k1)

    def after_step(self):
        pass


def build(spec):
    m = MoCoV3(spec)
    return m, m.base_encoder


if __name__ == "__main__":
    torch_ssl.main(build, "torch MoCo v3")
