#!/usr/bin/env python3
"""The reference input pipeline: torchvision's ImageFolder with MoCo v2's aug+ (two views, the
official moco/main_moco.py transforms) in a DataLoader, timed like `mocobench input`.

Usage: python bench/torch_input.py FOLDER [--size 224] [--batch 256] [--batches 10] [--workers 2]
Prints one JSON line (images/s over the timed batches, after one to warm up).
"""
import argparse, json, random, time

import torch
import torchvision.datasets as datasets
import torchvision.transforms as T
from PIL import ImageFilter


class GaussianBlur:
    """moco/loader.py's blur: sigma drawn from [0.1, 2.0]."""
    def __init__(self, sigma=(0.1, 2.0)): self.sigma = sigma
    def __call__(self, x): return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


class TwoCrops:
    def __init__(self, t): self.t = t
    def __call__(self, x): return [self.t(x), self.t(x)]


p = argparse.ArgumentParser()
p.add_argument("folder"); p.add_argument("--size", type=int, default=224); p.add_argument("--batch", type=int, default=256)
p.add_argument("--batches", type=int, default=10); p.add_argument("--workers", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(1)
aug = T.Compose([
    T.RandomResizedCrop(a.size, scale=(0.2, 1.0)),
    T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
    T.RandomGrayscale(p=0.2),
    T.RandomApply([GaussianBlur()], p=0.5),
    T.RandomHorizontalFlip(),
    T.ToTensor(),
    T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
])
t0 = time.perf_counter()
ds = datasets.ImageFolder(a.folder, TwoCrops(aug))
index_seconds = time.perf_counter() - t0
loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=a.workers, drop_last=True)
it = iter(loader)
next(it)
start = time.perf_counter()
images = 0
for _ in range(a.batches):
    (v1, v2), _ = next(it)
    images += v1.shape[0]
seconds = time.perf_counter() - start
print(json.dumps({"images": images, "seconds": seconds, "images_per_second": images / seconds, "views_per_image": 2,
                  "size": a.size, "workers": a.workers, "dataset_count": len(ds), "index_seconds": index_seconds}))
