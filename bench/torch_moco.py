#!/usr/bin/env python3
"""PyTorch (fp32, CPU) MoCo v2 reference trainer for IDX datasets (Fashion-MNIST).

Reads the same JSON job spec as the Swift trainer (see examples/fashion-mnist.json)
and trains MoCo v2 the way the official moco/builder.py and the MoCo CIFAR-10
demo do it (SplitBatchNorm shuffle-BN on one device, queue ring buffer, cosine
schedule set per epoch), with a weighted-kNN monitor (the demo's knn_predict)
on L2-normalised backbone features (global-average-pooled, before the MLP head).

Usage:
  torch_moco.py --config examples/fashion-mnist.json [--epochs N] [--width N]
      [--limit N] [--eval-limit N] [--threads N] [--workers N] [--out DIR]
      [--no-eval] [--data-dir DIR]

Smoke test:
  torch_moco.py --config examples/fashion-mnist.json --epochs 1 --width 8 \
      --limit 2048 --eval-limit 512

stdout: one JSON line per epoch
  {"epoch", "step", "loss", "lr", "images_per_second", "epoch_seconds",
   "eval_seconds", "knn_top1", "wall_seconds"}
then one summary line
  {"summary": true, "wall_seconds", "final_knn_top1", "raw_pixel_knn_top1",
   "train_images", "epochs", "width", "threads", "workers"}
The same lines go to DIR/metrics.jsonl when --out DIR is given.  Human-readable
progress (dataset sizes, mean/std, raw-pixel kNN) goes to stderr.

Data paths: a relative "path" is looked up relative to --data-dir (if given),
the current directory, the config file's directory, and /usr/share/datasets.
The checkpoint section of the spec is ignored (this trainer never checkpoints).
"""
import argparse
import copy
import gzip
import json
import math
import os
import random
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torchvision import transforms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_step import SplitBatchNorm, make_resnet_arch  # noqa: E402


# ----------------------------------------------------------------------------
# Data: IDX files
# ----------------------------------------------------------------------------

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SPLIT_PREFIX = {"train": "train", "test": "t10k", "t10k": "t10k"}


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: bad IDX magic {raw[:4].hex()}")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 1
    off = 4 + 4 * ndim
    if len(raw) - off < count * dtype.itemsize:
        raise ValueError(f"{path}: truncated IDX data ({len(raw) - off} bytes, "
                         f"need {count * dtype.itemsize})")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=off).reshape(dims).copy()


def resolve_dir(path, config_dir, data_dir):
    if os.path.isabs(path):
        cands = [path]
    else:
        cands = []
        if data_dir:
            cands += [os.path.join(data_dir, path), data_dir]
        cands += [path, os.path.join(config_dir, path),
                  os.path.join("/usr/share/datasets", path)]
    for c in cands:
        if os.path.isdir(c):
            return c
    raise FileNotFoundError(f"dataset directory {path!r} not found (tried {cands})")


def idx_file(directory, prefix, kind):
    for name in (f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte",
                 f"{prefix}-{kind.replace('-', '.')}-ubyte.gz"):
        p = os.path.join(directory, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"no {prefix}-{kind}-ubyte[.gz] in {directory}")


def load_split(section, config_dir, data_dir):
    fmt = section.get("format", "idx")
    if fmt != "idx":
        raise SystemExit(f"torch_moco.py only reads format 'idx' (got {fmt!r})")
    directory = resolve_dir(section["path"], config_dir, data_dir)
    split = section.get("split", "train")
    prefix = SPLIT_PREFIX.get(split, split)
    images = read_idx(idx_file(directory, prefix, "images-idx3"))
    labels = read_idx(idx_file(directory, prefix, "labels-idx1"))
    if images.dtype != np.uint8 or images.ndim != 3:
        raise SystemExit(f"expected uint8 N x H x W images, got {images.dtype} {images.shape}")
    limit = section.get("limit")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return np.ascontiguousarray(images), torch.from_numpy(labels.astype(np.int64))


# ----------------------------------------------------------------------------
# Augmentation (moco/loader.py + main_moco.py, adapted to 1-channel 28x28)
# ----------------------------------------------------------------------------

class GaussianBlur:
    """Gaussian blur augmentation in SimCLR https://arxiv.org/abs/2002.05709 (moco/loader.py)."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, x):
        sigma = random.uniform(self.sigma[0], self.sigma[1])
        return x.filter(ImageFilter.GaussianBlur(radius=sigma))


class TwoCropsTransform:
    """Take two random crops of one image as the query and key (moco/loader.py)."""

    def __init__(self, base_transform):
        self.base_transform = base_transform

    def __call__(self, x):
        return [self.base_transform(x), self.base_transform(x)]


def make_augmentation(preset, size, mean, std):
    normalize = transforms.Normalize(mean=mean, std=std)
    if preset == "v2":
        ops = [
            transforms.RandomResizedCrop(size, scale=(0.2, 1.0)),
            transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            transforms.RandomApply([GaussianBlur([0.1, 2.0])], p=0.5),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    elif preset == "v1":
        ops = [
            transforms.RandomResizedCrop(size, scale=(0.2, 1.0)),
            transforms.RandomGrayscale(p=0.2),
            transforms.ColorJitter(0.4, 0.4, 0.4, 0.4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    else:
        raise SystemExit(f"unknown augment preset {preset!r}")
    return TwoCropsTransform(transforms.Compose(ops))


class TwoViewDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])  # 2-D uint8 -> mode 'L'
        return self.transform(img), int(self.labels[i])


def to_normalized_tensor(images, mean, std):
    """ToTensor() + Normalize(mean, std) for a uint8 N x H x W array -> N x 1 x H x W."""
    t = torch.from_numpy(images).unsqueeze(1).float().div(255)
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return t.sub_(m).div_(s)


# ----------------------------------------------------------------------------
# Model: SplitBatchNorm + ResNet + MoCo v2 head (MoCo CIFAR demo / builder.py)
# ----------------------------------------------------------------------------

def use_split_bn(module, num_splits):
    """Replace every nn.BatchNorm2d in `module` by SplitBatchNorm (same params/buffers)."""
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            sbn = SplitBatchNorm(child.num_features, num_splits, eps=child.eps,
                                 momentum=child.momentum, affine=child.affine,
                                 track_running_stats=child.track_running_stats)
            sbn.load_state_dict(child.state_dict())
            setattr(module, name, sbn)
        else:
            use_split_bn(child, num_splits)
    return module


def build_encoder(mcfg, bn_splits):
    net = make_resnet_arch(mcfg.get("arch", "resnet18"), mcfg.get("width", 64),
                           mcfg.get("in_channels", 1), mcfg.get("stem", "cifar"),
                           num_classes=mcfg.get("dim", 128))
    feat = net.fc.in_features
    hidden = mcfg.get("mlp_hidden") or feat
    net.fc = nn.Sequential(nn.Linear(feat, hidden), nn.ReLU(), nn.Linear(hidden, mcfg.get("dim", 128)))
    if bn_splits and bn_splits > 1:  # the demo: SplitBatchNorm if bn_splits > 1 else BatchNorm2d
        use_split_bn(net, bn_splits)
    return net


def backbone_features(net, x):
    """ResNet forward up to global average pooling (the input of the MLP head)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


class MoCo:
    def __init__(self, encoder_q, dim, K, m, T, symmetric):
        self.encoder_q = encoder_q
        self.encoder_k = copy.deepcopy(encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.params_q = list(self.encoder_q.parameters())
        self.params_k = list(self.encoder_k.parameters())
        self.K, self.m, self.T, self.symmetric = K, m, T, symmetric
        self.queue = F.normalize(torch.randn(dim, K), dim=0)
        self.queue_ptr = 0

    def train(self):
        self.encoder_q.train()
        self.encoder_k.train()

    @torch.no_grad()
    def _momentum_update_key_encoder(self):
        for p_q, p_k in zip(self.params_q, self.params_k):
            p_k.data.mul_(self.m).add_(p_q.data, alpha=1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys):
        n = keys.shape[0]
        ptr = self.queue_ptr
        assert self.K % n == 0, f"queue {self.K} must be a multiple of {n}"
        self.queue[:, ptr:ptr + n] = keys.t()
        self.queue_ptr = (ptr + n) % self.K

    @torch.no_grad()
    def _keys(self, im_k):
        idx_shuffle = torch.randperm(im_k.shape[0])
        idx_unshuffle = torch.argsort(idx_shuffle)
        k = F.normalize(self.encoder_k(im_k[idx_shuffle]), dim=1)
        return k[idx_unshuffle]

    def _contrastive_loss(self, im_q, im_k, update_first):
        q = F.normalize(self.encoder_q(im_q), dim=1)
        if update_first:
            self._momentum_update_key_encoder()
        k = self._keys(im_k)
        l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", [q, self.queue.clone().detach()])
        logits = torch.cat([l_pos, l_neg], dim=1) / self.T
        labels = torch.zeros(logits.shape[0], dtype=torch.long)
        return F.cross_entropy(logits, labels), k

    def loss(self, im1, im2):
        if self.symmetric:  # the demo: loss_12 + loss_21, enqueue cat([k1, k2])
            loss_12, k2 = self._contrastive_loss(im1, im2, update_first=True)
            loss_21, k1 = self._contrastive_loss(im2, im1, update_first=False)
            return loss_12 + loss_21, torch.cat([k1, k2], dim=0)
        return self._contrastive_loss(im1, im2, update_first=True)


# ----------------------------------------------------------------------------
# kNN monitor (MoCo CIFAR demo)
# ----------------------------------------------------------------------------

def knn_predict(feature, feature_bank, feature_labels, classes, knn_k, knn_t):
    # compute cos similarity between each feature vector and feature bank ---> [B, N]
    sim_matrix = torch.mm(feature, feature_bank)
    # [B, K]
    sim_weight, sim_indices = sim_matrix.topk(k=knn_k, dim=-1)
    # [B, K]
    sim_labels = torch.gather(feature_labels.expand(feature.size(0), -1), dim=-1, index=sim_indices)
    sim_weight = (sim_weight / knn_t).exp()
    # counts for each class
    one_hot_label = torch.zeros(feature.size(0) * knn_k, classes, device=sim_labels.device)
    # [B*K, C]
    one_hot_label = one_hot_label.scatter(dim=-1, index=sim_labels.view(-1, 1), value=1.0)
    # weighted score ---> [B, C]
    pred_scores = torch.sum(one_hot_label.view(feature.size(0), -1, classes)
                            * sim_weight.unsqueeze(dim=-1), dim=1)
    return pred_scores.argsort(dim=-1, descending=True)


def knn_top1(bank_feats, bank_labels, query_feats, query_labels, classes, k, t, chunk=256):
    """bank_feats N x D, query_feats M x D, both L2-normalised. Returns top-1 in %."""
    bank = bank_feats.t().contiguous()
    k = min(k, bank.shape[1])
    correct = 0
    for i in range(0, query_feats.shape[0], chunk):
        pred = knn_predict(query_feats[i:i + chunk], bank, bank_labels, classes, k, t)
        correct += (pred[:, 0] == query_labels[i:i + chunk]).sum().item()
    return 100.0 * correct / query_feats.shape[0]


@torch.no_grad()
def extract(net, x, batch=512):
    was_training = net.training
    net.eval()
    out = [F.normalize(backbone_features(net, x[i:i + batch]), dim=1)
           for i in range(0, x.shape[0], batch)]
    net.train(was_training)
    return torch.cat(out, 0)


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def lr_for_epoch(ocfg, epoch, epochs):
    lr = ocfg["lr"]
    schedule = ocfg.get("schedule", "cosine")
    if schedule == "cosine":
        lr *= 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    elif schedule == "step":
        for milestone in ocfg.get("milestones", [120, 160]):
            lr *= 0.1 if epoch >= milestone else 1.0
    elif schedule not in (None, "constant", "none"):
        raise SystemExit(f"unknown schedule {schedule!r}")
    return lr


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="JSON job spec")
    p.add_argument("--epochs", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--limit", type=int, help="use the first N training images")
    p.add_argument("--eval-limit", type=int, help="use the first N eval images")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: spec 'threads')")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers (default 1)")
    p.add_argument("--out", help="directory for metrics.jsonl")
    p.add_argument("--no-eval", action="store_true", help="skip all kNN evaluation (timing only)")
    p.add_argument("--data-dir", help="extra directory to resolve relative dataset paths against")
    return p.parse_args(argv)


def main(argv=None):
    t_start = time.perf_counter()
    args = parse_args(argv)
    with open(args.config) as f:
        spec = json.load(f)
    config_dir = os.path.dirname(os.path.abspath(args.config))

    method = spec.get("method", "moco_v2")
    if method not in ("moco_v2", "moco_v1", "moco"):
        raise SystemExit(f"torch_moco.py implements MoCo only (got method {method!r})")
    dcfg = dict(spec["data"])
    ecfg = dict(spec["eval"]) if spec.get("eval") else None
    mcfg = dict(spec["model"])
    ccfg = dict(spec.get("moco", {}))
    acfg = dict(spec.get("augment", {}))
    ocfg = dict(spec["optim"])
    if args.epochs is not None:
        ocfg["epochs"] = args.epochs
    if args.width is not None:
        mcfg["width"] = args.width
    if args.limit is not None:
        dcfg["limit"] = args.limit
    if args.eval_limit is not None and ecfg is not None:
        ecfg["limit"] = args.eval_limit
    do_eval = ecfg is not None and not args.no_eval
    threads = args.threads if args.threads is not None else int(spec.get("threads") or 1)
    workers = args.workers
    seed = int(spec.get("seed", 0) or 0)
    epochs = int(ocfg["epochs"])
    batch = int(ocfg["batch_size"])

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)

    metrics_file = None
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        metrics_file = open(os.path.join(args.out, "metrics.jsonl"), "w")

    def emit(obj):
        line = json.dumps(obj)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        if metrics_file:
            metrics_file.write(line + "\n")
            metrics_file.flush()

    # --- data -----------------------------------------------------------------
    train_images, train_labels = load_split(dcfg, config_dir, args.data_dir)
    if acfg.get("mean") is None or acfg.get("std") is None:
        px = train_images.astype(np.float64) / 255.0
        mean, std = [float(px.mean())], [float(px.std())]
        del px
    else:
        mean, std = acfg["mean"], acfg["std"]
        mean = mean if isinstance(mean, list) else [mean]
        std = std if isinstance(std, list) else [std]
    size = int(acfg.get("size") or train_images.shape[1])
    log(f"train: {train_images.shape[0]} images {train_images.shape[1]}x{train_images.shape[2]} "
        f"mean={mean} std={std} threads={threads} workers={workers}")
    if train_images.shape[0] < batch:
        raise SystemExit(f"{train_images.shape[0]} training images < batch size {batch}")

    dataset = TwoViewDataset(train_images, train_labels,
                             make_augmentation(acfg.get("preset", "v2"), size, mean, std))
    gen = torch.Generator()
    gen.manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
        generator=gen, persistent_workers=workers > 0, pin_memory=False)

    raw_top1 = None
    if do_eval:
        eval_images, eval_labels = load_split(ecfg, config_dir, args.data_dir)
        classes = int(max(train_labels.max().item(), eval_labels.max().item())) + 1
        knn_k, knn_t = int(ecfg.get("knn_k", 200)), float(ecfg.get("knn_t", 0.1))
        bank_x = to_normalized_tensor(train_images, mean, std)
        query_x = to_normalized_tensor(eval_images, mean, std)
        t0 = time.perf_counter()
        raw_top1 = knn_top1(F.normalize(bank_x.flatten(1), dim=1), train_labels,
                            F.normalize(query_x.flatten(1), dim=1), eval_labels,
                            classes, knn_k, knn_t)
        log(f"eval: {eval_images.shape[0]} images; raw_pixel_knn_top1={raw_top1:.2f} "
            f"({time.perf_counter() - t0:.1f}s)")
        every = ecfg.get("every_epochs") or 0

    # --- model ----------------------------------------------------------------
    encoder_q = build_encoder(mcfg, int(ccfg.get("bn_splits", 1) or 1))
    moco = MoCo(encoder_q, int(mcfg.get("dim", 128)), int(ccfg.get("queue", 4096)),
                float(ccfg.get("momentum", 0.99)), float(ccfg.get("temperature", 0.1)),
                bool(ccfg.get("symmetric", False)))
    optimizer = torch.optim.SGD(encoder_q.parameters(), lr=ocfg["lr"],
                                momentum=ocfg.get("momentum", 0.9),
                                weight_decay=ocfg.get("weight_decay", 5e-4))

    # --- train ----------------------------------------------------------------
    step = 0
    final_top1 = None
    for epoch in range(epochs):
        lr = lr_for_epoch(ocfg, epoch, epochs)
        for g in optimizer.param_groups:
            g["lr"] = lr
        moco.train()
        total_loss, n_steps, n_images = 0.0, 0, 0
        t0 = time.perf_counter()
        for (im_1, im_2), _ in loader:
            loss, k = moco.loss(im_1, im_2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            moco._dequeue_and_enqueue(k)
            total_loss += loss.item()
            n_steps += 1
            n_images += im_1.shape[0]
            step += 1
        epoch_seconds = time.perf_counter() - t0

        top1, eval_seconds = None, 0.0
        if do_eval and ((every and (epoch + 1) % every == 0) or epoch + 1 == epochs):
            t1 = time.perf_counter()
            top1 = knn_top1(extract(encoder_q, bank_x), train_labels,
                            extract(encoder_q, query_x), eval_labels, classes, knn_k, knn_t)
            eval_seconds = time.perf_counter() - t1
            final_top1 = top1
        emit({"epoch": epoch + 1, "step": step,
              "loss": total_loss / max(n_steps, 1), "lr": lr,
              "images_per_second": n_images / epoch_seconds if epoch_seconds > 0 else None,
              "epoch_seconds": epoch_seconds, "eval_seconds": eval_seconds,
              "knn_top1": top1, "wall_seconds": time.perf_counter() - t_start})

    emit({"summary": True, "wall_seconds": time.perf_counter() - t_start,
          "final_knn_top1": final_top1, "raw_pixel_knn_top1": raw_top1,
          "train_images": int(train_images.shape[0]), "epochs": epochs,
          "width": int(mcfg.get("width", 64)), "threads": threads, "workers": workers})
    if metrics_file:
        metrics_file.close()


if __name__ == "__main__":
    main()
