#!/usr/bin/env python3
"""Fashion-MNIST as PNG tar shards in the WebDataset layout (key.png + key.cls), made from
Debian's IDX files with the standard library alone (zlib PNGs, tarfile).

Usage: python3 bench/make_fmnist_shards.py OUTDIR [PER_SHARD]
Writes OUTDIR/train-000000.tar ... (60,000 images) and OUTDIR/test-000000.tar ... (10,000), in
the IDX files' order, PER_SHARD (default 1000) samples per shard.
"""
import gzip, io, os, struct, sys, tarfile, zlib

SRC = "/usr/share/datasets/fashion-mnist"


def idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        h, w = struct.unpack(">II", data[8:16])
        return [data[16 + i * h * w: 16 + (i + 1) * h * w] for i in range(n)], (h, w)
    return list(data[8:8 + n]), None


def png(pixels, h, w):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    rows = b"".join(b"\x00" + pixels[y * w:(y + 1) * w] for y in range(h))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def find(name):
    for candidate in (name + ".gz", name):
        p = os.path.join(SRC, candidate)
        if os.path.exists(p):
            return p
    sys.exit(f"missing {name} under {SRC} (apt-get install dataset-fashion-mnist)")


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def main():
    out = sys.argv[1]
    per = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    os.makedirs(out, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, (h, w) = idx(find(f"{prefix}-images-idx3-ubyte"))
        labels, _ = idx(find(f"{prefix}-labels-idx1-ubyte"))
        for s in range(0, len(images), per):
            with tarfile.open(os.path.join(out, f"{split}-{s // per:06d}.tar"), "w", format=tarfile.USTAR_FORMAT) as tar:
                for i in range(s, min(s + per, len(images))):
                    add(tar, f"{i:06d}.png", png(images[i], h, w))
                    add(tar, f"{i:06d}.cls", str(labels[i]).encode())
        print(f"{split}: {len(images)} images in {(len(images) + per - 1) // per} shards")


main()
