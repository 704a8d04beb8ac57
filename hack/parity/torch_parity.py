#!/usr/bin/env python3
"""PyTorch side of Gantry's parity tests (pkg/autograd/parity_test.go).

Reads cases.json and the float32 inputs beside it, computes each case with PyTorch (CPU,
float64 for a reference free of float32 rounding), and writes the outputs as raw float32
files named in cases.json. Runs under Debian's python3-torch (/usr/bin/python3).
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F


def load(d, name, shape):
    a = np.fromfile(os.path.join(d, name + ".bin"), dtype="<f4").reshape(shape)
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


def save(d, name, t):
    t.detach().to(torch.float32).numpy().astype("<f4").tofile(os.path.join(d, name + ".out"))


def lrelu_bias(x, b, gain):
    return F.leaky_relu(x + b.view(1, -1, *([1] * (x.dim() - 2))), 0.2) * gain


def blur_filter(c):
    f = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    k = torch.outer(f, f)
    k = k / k.sum()
    return k.view(1, 1, 3, 3).repeat(c, 1, 1, 1)


def mbstd(x, group, eps=1e-8):
    n, c, h, w = x.shape
    g = min(group, n)
    y = x.reshape(g, -1, c, h, w)
    y = y - y.mean(dim=0)
    y = (y * y).mean(dim=0)
    y = torch.sqrt(y + eps)
    y = y.mean(dim=[1, 2, 3])  # [M]
    y = y.view(-1, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y], dim=1)


def two_conv_d(x, p):
    he = math.sqrt(2)
    c1 = F.conv2d(x, p["w1"] * (he / math.sqrt(p["w1"][0].numel())), padding=1)
    h1 = lrelu_bias(c1, p["b1"], he)
    c2 = F.conv2d(h1, p["w2"] * (he / math.sqrt(p["w2"][0].numel())), padding=1)
    h2 = lrelu_bias(c2, p["b2"], he)
    flat = h2.reshape(h2.shape[0], -1)
    return flat @ (p["wd"] * (1 / math.sqrt(flat.shape[1]))).t()


def main():
    d = sys.argv[1]
    torch.set_num_threads(2)
    with open(os.path.join(d, "cases.json")) as f:
        cases = json.load(f)
    for case in cases:
        kind = case["kind"]
        t = {k: load(d, v["name"], v["shape"]) for k, v in case["inputs"].items()}
        if kind == "conv":
            y = F.conv2d(t["x"], t["w"] * case["alpha"], stride=case["stride"], padding=case["pad"])
            gx, gw = torch.autograd.grad(y, [t["x"], t["w"]], t["gy"])
            outs = {"y": y, "gx": gx, "gw": gw}
        elif kind == "lrelu":
            y = lrelu_bias(t["x"], t["b"], math.sqrt(2))
            gx, gb = torch.autograd.grad(y, [t["x"], t["b"]], t["gy"])
            outs = {"y": y, "gx": gx, "gb": gb}
        elif kind == "blur":
            x = t["x"]
            y = F.conv2d(x, blur_filter(x.shape[1]), padding=1, groups=x.shape[1])
            (gx,) = torch.autograd.grad(y, [x], t["gy"])
            outs = {"y": y, "gx": gx}
        elif kind == "box_down":
            y = F.avg_pool2d(t["x"], 2)
            (gx,) = torch.autograd.grad(y, [t["x"]], t["gy"])
            outs = {"y": y, "gx": gx}
        elif kind == "instance_norm":
            x = t["x"]
            n, c = x.shape[:2]
            y = F.instance_norm(x, eps=1e-8) * (1 + t["s"].view(n, c, 1, 1)) + t["b"].view(n, c, 1, 1)
            gx, gs, gb = torch.autograd.grad(y, [x, t["s"], t["b"]], t["gy"])
            outs = {"y": y, "gx": gx, "gs": gs, "gb": gb}
        elif kind == "mbstd":
            y = mbstd(t["x"], case["group"])
            (gx,) = torch.autograd.grad(y, [t["x"]], t["gy"])
            outs = {"y": y, "gx": gx}
        elif kind == "r1":
            x = t["x"]
            p = {k: t[k] for k in ("w1", "b1", "w2", "b2", "wd")}
            logits = two_conv_d(x, p)
            (gx,) = torch.autograd.grad(logits.sum(), [x], create_graph=True)
            penalty = gx.square().sum(dim=[1, 2, 3]).mean() * (case["gamma"] / 2)
            grads = torch.autograd.grad(penalty, [p[k] for k in ("w1", "b1", "w2", "b2", "wd")])
            outs = {"penalty": penalty.view(1), "gx": gx}
            outs.update({"g_" + k: g for k, g in zip(("w1", "b1", "w2", "b2", "wd"), grads)})
        else:
            raise SystemExit(f"torch_parity: unknown case kind {kind!r}")
        for k, v in outs.items():
            save(d, case["name"] + "." + k, v)


if __name__ == "__main__":
    main()
