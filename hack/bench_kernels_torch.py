#!/usr/bin/env python3
"""PyTorch side of `make bench-kernels`.

Serves benchmark requests on stdin, one per line, so that test/cmd/benchkernels can
alternate Gantry and PyTorch measurements of the same case under the same machine load:

    <mintime_seconds> <wall|cpu> conv N CIN COUT HW K [STRIDE PAD] | gemm M | biasact N C HW | blur N C HW DOWN | adain N C HW

and answers each with one JSON line {"fwd": seconds, "fwdbwd": seconds} (best of repeated
runs after a warm-up, by wall time or by process CPU time divided by the thread count). "threads" is answered with the thread count in use.
"""
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F


def best(fn, mintime, clock, threads):
    """Best of repeated runs after a warm-up, by wall time or by process CPU time / threads."""
    fn()
    best_s = math.inf
    start = time.perf_counter()
    i = 0
    while i < 3 or time.perf_counter() - start < mintime:
        if clock == "cpu":
            t0 = time.process_time()
            fn()
            s = (time.process_time() - t0) / threads
        else:
            t0 = time.perf_counter()
            fn()
            s = time.perf_counter() - t0
        best_s = min(best_s, s)
        i += 1
    return best_s


def case_conv(n, cin, cout, hw, k, stride=1, pad=None):
    pad = k // 2 if pad is None else pad
    x = torch.randn(n, cin, hw, hw, requires_grad=True)
    w = torch.randn(cout, cin, k, k, requires_grad=True)
    ho = (hw + 2 * pad - k) // stride + 1
    dy = torch.randn(n, cout, ho, ho)

    def fwd():
        with torch.no_grad():
            F.conv2d(x, w, stride=stride, padding=pad)

    def fwdbwd():
        x.grad = None
        w.grad = None
        F.conv2d(x, w, stride=stride, padding=pad).backward(dy)

    return fwd, fwdbwd


def case_gemm(m):
    a, b = torch.randn(m, m), torch.randn(m, m)
    out = torch.empty(m, m)

    def fwd():
        torch.mm(a, b, out=out)

    return fwd, fwd


def case_biasact(n, c, hw):
    x = torch.randn(n, c, hw, hw, requires_grad=True)
    b = torch.randn(c, requires_grad=True)
    dy = torch.randn(n, c, hw, hw)
    gain = math.sqrt(2)

    def fwd():
        with torch.no_grad():
            F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2) * gain

    def fwdbwd():
        x.grad = None
        b.grad = None
        (F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2) * gain).backward(dy)

    return fwd, fwdbwd


def case_blur(n, c, hw, down):
    x = torch.randn(n, c, hw, hw, requires_grad=True)
    f = torch.tensor([0.25, 0.5, 0.25])
    w = torch.outer(f, f).view(1, 1, 3, 3).repeat(c, 1, 1, 1)

    def run():
        if down == 2:  # pad 1 before, 0 after, then stride 2: Gantry's blur+down2
            return F.conv2d(F.pad(x, (1, 0, 1, 0)), w, stride=2, groups=c)
        return F.conv2d(x, w, padding=1, groups=c)

    with torch.no_grad():
        dy = torch.randn_like(run())

    def fwd():
        with torch.no_grad():
            run()

    def fwdbwd():
        x.grad = None
        run().backward(dy)

    return fwd, fwdbwd


def case_adain(n, c, hw):
    x = torch.randn(n, c, hw, hw, requires_grad=True)
    s = torch.randn(n, c, requires_grad=True)
    b = torch.randn(n, c, requires_grad=True)
    dy = torch.randn(n, c, hw, hw)

    def run():
        xn = F.instance_norm(x, eps=1e-8)
        return xn * (1 + s[:, :, None, None]) + b[:, :, None, None]

    def fwd():
        with torch.no_grad():
            run()

    def fwdbwd():
        x.grad = s.grad = b.grad = None
        run().backward(dy)

    return fwd, fwdbwd


CASES = {"conv": case_conv, "gemm": case_gemm, "biasact": case_biasact, "blur": case_blur, "adain": case_adain}


def main():
    threads = int(os.environ.get("GANTRY_BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cache = {}
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "threads":
            print(json.dumps({"threads": torch.get_num_threads()}), flush=True)
            continue
        mintime, clock, name = float(parts[0]), parts[1], parts[2]
        args = tuple(int(a) for a in parts[3:])
        key = (name,) + args
        if key not in cache:
            cache.clear()  # keep one case's tensors alive at a time
            cache[key] = CASES[name](*args)
        fwd, fwdbwd = cache[key]
        print(json.dumps({"fwd": best(fwd, mintime, clock, threads),
                          "fwdbwd": best(fwdbwd, mintime, clock, threads)}), flush=True)


if __name__ == "__main__":
    main()
