#!/usr/bin/python3
"""Python peer of `make bench-dataset`: the same import and loading work with PIL and numpy.

Import: decode Fashion-MNIST's IDX images, resize each 28x28 image to R x R with PIL's
Lanczos filter, build every level of detail down to 4x4 by 2x2 box averaging in float32
with round-half-to-even (as StyleGAN's dataset tool does), and write the uint8 levels to
shard files. Loading: shuffle, gather minibatches at 32x32, mirror half at random and
convert to float32 NCHW in [-1, 1]. Prints images/s for each, one JSON line.
"""
import gzip
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image


def read_idx(path):
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    nd = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * nd).reshape(dims)


def pyramid(img):
    levels = []
    cur = img.astype(np.float32)
    while cur.shape[-1] >= 4:
        levels.append(np.rint(cur).clip(0, 255).astype(np.uint8))
        cur = (cur[0::2, 0::2] + cur[0::2, 1::2] + cur[1::2, 0::2] + cur[1::2, 1::2]) * 0.25
    return levels


def bench_import(images, res, shard_size, out_dir):
    t0 = time.perf_counter()
    n = len(images)
    for s in range(0, n, shard_size):
        per_level = None
        for img in images[s:s + shard_size]:
            pil = Image.fromarray(img, mode="L")
            if pil.size != (res, res):
                pil = pil.resize((res, res), Image.LANCZOS)
            levels = pyramid(np.asarray(pil))
            if per_level is None:
                per_level = [[] for _ in levels]
            for l, lv in enumerate(levels):
                per_level[l].append(lv.tobytes())
        with open(os.path.join(out_dir, "shard-%06d.bin" % (s // shard_size)), "wb") as f:
            for lv in per_level:
                f.write(b"".join(lv))
    return n / (time.perf_counter() - t0)


def bench_loader(data, batch, batches, seed=0):
    rng = np.random.default_rng(seed)
    n = len(data)
    order = rng.permutation(n)
    pos = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        if pos + batch > n:
            order, pos = rng.permutation(n), 0
        idx = order[pos:pos + batch]
        pos += batch
        x = data[idx].astype(np.float32) * (1 / 127.5) - 1
        flip = rng.random(batch) < 0.5
        x[flip] = x[flip, :, :, ::-1]
        x = np.ascontiguousarray(x)
    return batch * batches / (time.perf_counter() - t0)


def main():
    src, res = sys.argv[1], int(sys.argv[2])
    images = read_idx(src)
    with tempfile.TemporaryDirectory() as out:
        import_ips = bench_import(images, res, 2048, out)
    level32 = np.stack([np.asarray(Image.fromarray(i, mode="L").resize((32, 32), Image.LANCZOS)) for i in images[:10000]])
    loader_ips = bench_loader(level32[:, None, :, :], 64, 2000)
    print(json.dumps({"import_images_per_s": round(import_ips), "loader_images_per_s_32": round(loader_ips)}))


if __name__ == "__main__":
    main()
