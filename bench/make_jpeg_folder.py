#!/usr/bin/env python3
"""A folder of N synthetic JPEG photos for the data-at-scale benchmarks (never committed).

Usage: python bench/make_jpeg_folder.py OUTDIR N [--seed S] [--tar SHARD_SIZE] [--workers W]
Images are 200-500 px on each side (varied aspect), smooth color fields with shapes and mild
noise (so they compress like photos), quality 90, in 10 class folders (c0 ... c9). With --tar,
also writes OUTDIR-shards/shard-000000.tar ... (WebDataset layout: key.jpg + key.cls).
Image i is a function of (seed, i) alone, so W worker processes write the same folder as one.
Needs numpy and Pillow (the torch virtual environment has both).
"""
import argparse, io, multiprocessing, os, tarfile

import numpy as np
from PIL import Image, ImageDraw

p = argparse.ArgumentParser()
p.add_argument("out"); p.add_argument("n", type=int)
p.add_argument("--seed", type=int, default=0); p.add_argument("--tar", type=int, default=0)
p.add_argument("--workers", type=int, default=1)
a = p.parse_args()


def jpeg(i):
    """The JPEG bytes of image i: a function of (seed, i)."""
    rng = np.random.default_rng([a.seed, i])
    w, h = (int(v) for v in rng.integers(200, 501, size=2))
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(np.sin(xx / rng.uniform(20, 90) + rng.uniform(0, 6)) * 60 + rng.uniform(60, 190)) for _ in range(3)], -1)
    base += np.stack([yy / h * rng.uniform(-60, 60)] * 3, -1)
    base += rng.normal(0, 6, size=base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        d.ellipse([x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    buf = io.BytesIO(); img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write(i):
    data = jpeg(i)
    with open(os.path.join(a.out, f"c{i % 10}", f"{i:07d}.jpg"), "wb") as f:
        f.write(data)
    return i


for c in range(10):
    os.makedirs(os.path.join(a.out, f"c{c}"), exist_ok=True)
with multiprocessing.Pool(a.workers) as pool:
    for done, _ in enumerate(pool.imap_unordered(write, range(a.n), chunksize=64), 1):
        if done % 10000 == 0:
            print(f"{done}/{a.n}", flush=True)
shards = 0
if a.tar:
    os.makedirs(a.out + "-shards", exist_ok=True)
    for shards, start in enumerate(range(0, a.n, a.tar), 1):
        with tarfile.open(os.path.join(a.out + "-shards", f"shard-{shards - 1:06d}.tar"), "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(start, min(start + a.tar, a.n)):
                with open(os.path.join(a.out, f"c{i % 10}", f"{i:07d}.jpg"), "rb") as f:
                    data = f.read()
                for name, payload in ((f"{i:07d}.jpg", data), (f"{i:07d}.cls", str(i % 10).encode())):
                    info = tarfile.TarInfo(name); info.size = len(payload); tar.addfile(info, io.BytesIO(payload))
print(f"{a.n} JPEGs in {a.out}" + (f" and {shards} shards in {a.out}-shards" if a.tar else ""))
