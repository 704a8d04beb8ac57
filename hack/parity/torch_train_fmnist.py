#!/usr/bin/env python3
"""Train the PyTorch twin (hack/bench_train_torch.py) on Fashion-MNIST at a fixed 32x32.

A diagnostic for training quality: the same architecture, losses and optimiser settings as
Gantry's fashion-mnist-demo preset without progressive growing, so that a Gantry run with
--schedule-fixed-resolution can be compared with it grid for grid. Writes grids-<kimg>.png
(8x8, Gs, no truncation) to --out and prints losses per tick.
Run with /usr/bin/python3 (Debian's python3-torch).
"""
import argparse
import gzip
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import bench_train_torch as bt  # noqa: E402


def load_fmnist(path):
    with gzip.open(path, "rb") as f:
        b = f.read()
    n = int.from_bytes(b[4:8], "big")
    x = np.frombuffer(b, dtype=np.uint8, offset=16).reshape(n, 1, 28, 28)
    x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return torch.from_numpy(x.astype(np.float32) / 127.5 - 1)


def save_grid(imgs, path):
    from PIL import Image
    imgs = ((imgs.clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    n, _, h, w = imgs.shape
    k = int(math.sqrt(n))
    out = np.zeros((k * (h + 1), k * (w + 1)), dtype=np.uint8) + 255
    for i in range(k * k):
        r, c = divmod(i, k)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = imgs[i, 0]
    Image.fromarray(out).save(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
    ap.add_argument("--out", default="/tmp/torch-fmnist")
    ap.add_argument("--kimg", type=float, default=20)
    ap.add_argument("--tick-kimg", type=float, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--r1-gamma", type=float, default=0.01)
    ap.add_argument("--fmap-base", type=int, default=256)
    ap.add_argument("--fmap-max", type=int, default=64)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--ema-kimg", type=float, default=1)
    ap.add_argument("--mixing", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--map-layers", type=int, default=8)
    ap.add_argument("--mbstd-group", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    data = load_fmnist(a.data)

    t = bt.Twin.__new__(bt.Twin)
    res, ch = 32, 1
    t.zdim, t.batch, t.r1_gamma, t.mixing = a.dim, a.batch, a.r1_gamma, a.mixing
    mk = lambda: bt.Generator(res, ch, a.dim, a.dim, a.map_layers, 0.01, a.fmap_base, 1.0, a.fmap_max, "groups")
    t.G = mk()
    t.Gs = mk().requires_grad_(False)
    t.Gs.load_state_dict(t.G.state_dict())
    for e in t.G.epi:  # use_noise: false, as the demo preset
        e.noise_strength.requires_grad_(False)
    t.D = bt.Discriminator(res, ch, a.fmap_base, 1.0, a.fmap_max, "groups", a.mbstd_group)
    t.w_avg = torch.zeros(a.dim)
    params = [p for p in t.G.parameters() if p.requires_grad]
    t.optG = torch.optim.Adam(params, lr=a.lr, betas=(0.0, 0.99), eps=1e-8)
    t.optD = torch.optim.Adam(t.D.parameters(), lr=a.lr, betas=(0.0, 0.99), eps=1e-8)
    t.ema_beta = 0.5 ** (a.batch / (a.ema_kimg * 1000))
    grid_z = torch.randn(64, a.dim)
    nimg, next_tick, t0 = 0, 0, time.time()
    perm = torch.randperm(len(data))
    pos = 0
    while nimg <= a.kimg * 1000:
        if nimg >= next_tick:
            with torch.no_grad():
                fakes = t.Gs(grid_z)[0]
                save_grid(fakes, os.path.join(a.out, "grid-%06.1f.png" % (nimg / 1000)))
                # diversity: per-pixel std over the 64 samples, relative to the reals'
                div = float(fakes.std(dim=0).mean() / data[:1024].std(dim=0).mean())
                print("kimg %.1f diversity %.3f" % (nimg / 1000, div), flush=True)
            next_tick += a.tick_kimg * 1000
        if pos + a.batch > len(perm):
            perm, pos = torch.randperm(len(data)), 0
        t.reals = data[perm[pos:pos + a.batch]]
        pos += a.batch
        ld, lg, r1 = t.step()
        nimg += a.batch
        if nimg % (a.batch * 50) == 0:
            print("kimg %.1f loss_d %.3f loss_g %.3f r1 %.4f  %.0f s" % (nimg / 1000, ld, lg, r1, time.time() - t0), flush=True)


if __name__ == "__main__":
    main()
