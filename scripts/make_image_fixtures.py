#!/usr/bin/env python3
"""Generate the tiny image/dataset fixtures under Tests/Fixtures/images/.

Usage:  python scripts/make_image_fixtures.py [OUTDIR]
        (default OUTDIR: <repo>/Tests/Fixtures/images)

Everything is deterministic (fixed formulas and numpy's PCG64 seeded RNG; gzip
mtime 0), so rerunning reproduces the same files with the same numpy/Pillow/zlib.
Needs numpy and Pillow.  See Tests/Fixtures/images/README.md for the file list.
"""
import gzip
import json
import os
import struct
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W, H = 8, 6
JPEG_TOLERANCE = 2


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def rgb_pattern(seed):
    """H x W x 3 uint8: R horizontal gradient, G vertical gradient, B seeded noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    r = x * 32 + 8
    g = y * 40 + 20
    b = rng.integers(0, 256, size=(H, W))
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def smooth_rgb():
    """Smooth content for JPEG (keeps decoder-to-decoder IDCT differences small)."""
    y, x = np.mgrid[0:H, 0:W]
    r = 40 + x * 20
    g = 200 - y * 25
    b = 60 + (x + y) * 10
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def save_image(img, path, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, **kw)


def make_folder(out):
    folder = os.path.join(out, "folder")
    y, x = np.mgrid[0:H, 0:W]
    # cat/a.png: 8x6 RGB
    save_image(Image.fromarray(rgb_pattern(1), "RGB"), os.path.join(folder, "cat", "a.png"))
    # cat/b.png: 8x6 grayscale 'L' (gradient + seeded noise)
    rng = np.random.default_rng(2)
    gray = ((x * 30 + y * 5 + rng.integers(0, 16, size=(H, W))) % 256).astype(np.uint8)
    save_image(Image.fromarray(gray), os.path.join(folder, "cat", "b.png"))
    # cat/c.jpg: 8x6 RGB JPEG, quality 95, no chroma subsampling (4:4:4)
    save_image(Image.fromarray(smooth_rgb(), "RGB"), os.path.join(folder, "cat", "c.jpg"),
               quality=95, subsampling=0)
    # dog/d.png: 8x6 RGBA (alpha gradient; convert("RGB") just drops alpha)
    rgba = np.concatenate([rgb_pattern(4), (255 - (x * 30 + y * 4))[..., None]], axis=-1)
    save_image(Image.fromarray(rgba.astype(np.uint8), "RGBA"), os.path.join(folder, "dog", "d.png"))
    # dog/e.jpg: 8x6 grayscale JPEG, quality 95
    gray_smooth = (30 + x * 20 + y * 12).astype(np.uint8)
    save_image(Image.fromarray(gray_smooth), os.path.join(folder, "dog", "e.jpg"), quality=95)
    # dog/f.png: 8x6 16-bit grayscale; value = 1285 * (y*8 + x), so value/257 == value>>8 == 5*(y*8+x)
    v16 = (1285 * (y * W + x)).astype(np.uint16)
    f_path = os.path.join(folder, "dog", "f.png")
    try:
        save_image(Image.fromarray(v16), f_path)  # Image.fromarray(uint16) -> mode 'I;16'
        check = Image.open(f_path)
        check.load()
        if check.mode not in ("I;16", "I", "I;16B"):
            raise ValueError(f"16-bit PNG read back as {check.mode}")
        f_kind = "I;16"
    except Exception as exc:  # fall back to a palette image
        sys.stderr.write(f"PIL could not write a 16-bit PNG ({exc}); writing a 'P' image\n")
        pal = Image.fromarray((v16 // 257 // 60).astype(np.uint8), "L").convert("P")
        pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (3 * 252))
        save_image(pal, f_path)
        f_kind = "P"

    files = []
    for cls in sorted(os.listdir(folder)):
        for name in sorted(os.listdir(os.path.join(folder, cls))):
            rel = f"{cls}/{name}"
            im = Image.open(os.path.join(folder, cls, name))
            im.load()
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
            entry = {"path": rel, "width": im.width, "height": im.height,
                     "format": im.format, "mode": im.mode, "jpeg": im.format == "JPEG",
                     "pixels": [int(v) for v in rgb.reshape(-1)]}
            if rel == "dog/f.png" and f_kind == "I;16":
                entry["values16"] = [int(v) for v in np.asarray(im).reshape(-1)]
            files.append(entry)
    files.sort(key=lambda e: e["path"])
    note = ("pixels: PIL Image.open(path).convert('RGB') as a flat row-major H*W*3 list. "
            f"JPEG entries may differ by +-{JPEG_TOLERANCE} between decoders. "
            "RGBA: alpha dropped, no premultiplication. "
            "16-bit f.png: PIL's convert('RGB') CLAMPS the 16-bit value to 0..255 (it does not "
            "scale), so pixels are 0 or 255; values16 are the stored 16-bit samples "
            "(1285*i, so value>>8 == round(value/257) == 5*i for a scaling decoder).")
    lines = ["{", f'  "note": {json.dumps(note)},', f'  "jpeg_tolerance": {JPEG_TOLERANCE},',
             '  "files": [']
    lines += ["    " + json.dumps(e) + ("," if i + 1 < len(files) else "") for i, e in enumerate(files)]
    lines += ["  ]", "}"]
    write(os.path.join(out, "folder_expected.json"), ("\n".join(lines) + "\n").encode())
    return f_kind


def make_corrupt(out):
    folder = os.path.join(out, "folder")
    corrupt = os.path.join(out, "corrupt")
    with open(os.path.join(folder, "cat", "a.png"), "rb") as f:
        png = f.read()
    with open(os.path.join(folder, "cat", "c.jpg"), "rb") as f:
        jpg = f.read()
    write(os.path.join(corrupt, "truncated.png"), png[:len(png) // 2])
    garbage = np.random.default_rng(7).integers(0, 256, size=64, dtype=np.uint8).tobytes()
    assert not garbage.startswith(b"\x89PNG")
    write(os.path.join(corrupt, "garbage.png"), garbage)
    write(os.path.join(corrupt, "truncated.jpg"), jpg[:int(len(jpg) * 0.6)])
    write(os.path.join(corrupt, "empty.jpg"), b"")
    write(os.path.join(corrupt, "not_png_header.png"), jpg)


def make_npy(out):
    tiny = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    np.save(os.path.join(out, "tiny.npy"), tiny)
    np.save(os.path.join(out, "tiny_rgb.npy"), np.arange(2 * 3 * 2 * 3, dtype=np.uint8).reshape(2, 3, 2, 3))
    np.save(os.path.join(out, "bad_dtype.npy"), np.arange(8, dtype=np.float32).reshape(2, 2, 2))
    with open(os.path.join(out, "tiny.npy"), "rb") as f:
        data = f.read()
    write(os.path.join(out, "truncated.npy"), data[:len(data) - tiny.nbytes // 2])
    fortran = np.asfortranarray(np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3))
    np.save(os.path.join(out, "fortran.npy"), fortran)
    with open(os.path.join(out, "fortran.npy"), "rb") as f:
        assert b"'fortran_order': True" in f.read(128)


def idx_bytes(type_code, dims, payload):
    return bytes([0, 0, type_code, len(dims)]) + struct.pack(">" + "I" * len(dims), *dims) + payload


def gz(data):
    return gzip.compress(data, compresslevel=9, mtime=0)


def make_idx(out):
    d = os.path.join(out, "idx")
    images = (np.arange(10)[:, None] * 16 + np.arange(16)[None, :]).astype(np.uint8)  # image i, pixel j: i*16+j
    img = idx_bytes(0x08, (10, 4, 4), images.tobytes())
    lab = idx_bytes(0x08, (10,), bytes(range(10)))
    write(os.path.join(d, "t10-images-idx3-ubyte"), img)
    write(os.path.join(d, "t10-labels-idx1-ubyte"), lab)
    write(os.path.join(d, "t10-images-idx3-ubyte.gz"), gz(img))
    write(os.path.join(d, "t10-labels-idx1-ubyte.gz"), gz(lab))
    write(os.path.join(d, "bad-magic-idx3-ubyte"), b"\x12\x34\x08\x03" + img[4:])
    write(os.path.join(d, "truncated-images-idx3-ubyte.gz"),
          gz(idx_bytes(0x08, (10, 4, 4), images[:3].tobytes())))
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # gzip, deflate, no flags, mtime 0
    # 0xff first: deflate block type 3 (reserved) -> any inflater must fail
    garbage = b"\xff" + np.random.default_rng(11).integers(0, 256, size=47, dtype=np.uint8).tobytes()
    write(os.path.join(d, "corrupt.gz"), header + garbage)
    try:
        gzip.decompress(header + garbage)
        raise AssertionError("corrupt.gz decompressed")
    except (OSError, EOFError, ValueError, __import__("zlib").error):
        pass


def cifar_pixels(r):
    """3 x 32 x 32 uint8 (R, G, B planes): value = (r*50 + c*80 + y*7 + x*3) % 256."""
    c, y, x = np.mgrid[0:3, 0:32, 0:32]
    return ((r * 50 + c * 80 + y * 7 + x * 3) % 256).astype(np.uint8)


def make_cifar(out):
    d = os.path.join(out, "cifar")
    c10 = b"".join(bytes([label]) + cifar_pixels(r).tobytes() for r, label in enumerate([3, 7, 9]))
    write(os.path.join(d, "data_batch_1.bin"), c10)
    c100 = b"".join(bytes([coarse, fine]) + cifar_pixels(r).tobytes()
                    for r, (coarse, fine) in enumerate([(4, 30), (19, 99)]))
    write(os.path.join(d, "cifar100.bin"), c100)
    write(os.path.join(d, "truncated.bin"), c10[:3073 + 3073 // 2])


def main(argv):
    out = argv[1] if len(argv) > 1 else os.path.join(ROOT, "Tests", "Fixtures", "images")
    os.makedirs(out, exist_ok=True)
    f_kind = make_folder(out)
    make_corrupt(out)
    make_npy(out)
    make_idx(out)
    make_cifar(out)
    total = 0
    for dirpath, _, names in os.walk(out):
        for n in names:
            total += os.path.getsize(os.path.join(dirpath, n))
    print(f"wrote fixtures to {out} ({total} bytes; dog/f.png mode {f_kind})")


if __name__ == "__main__":
    main(sys.argv)
