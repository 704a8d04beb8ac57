#!/usr/bin/env python3
"""PyTorch twin of Gantry's StyleGAN training step, for `make bench-train`.

The same architecture as pkg/model and the same step as pkg/train at the S32-small
configuration, written the way a PyTorch user would: nn.Modules with equalised-lr weights
scaled at run time, F.conv2d, F.leaky_relu, F.instance_norm, autograd with
create_graph=True for R1, torch.optim.Adam. One step is:
  D step: G forward without grad, D on fakes and on reals, R1 on reals (double backward),
          backward, Adam on D;
  G step: G forward, D forward (D frozen), backward, Adam on G, running average of w;
  EMA:    Gs = G + beta (Gs - G).
Prints one line: BENCH impl=pytorch img_per_s=... (best of --repeats rounds of --steps), or,
with --serve, runs one step per "step" line on stdin for hack/benchtrain, which alternates
Gantry's and PyTorch's steps.
"""
import argparse
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

LRELU = 0.2
EPS = 1e-8


def nf(stage, base, decay, fmax):
    return max(min(int(base / 2.0 ** (stage * decay)), fmax), 1)


class EqConv2d(nn.Module):
    """Conv with weights N(0,1), multiplied by gain/sqrt(fan_in) at run time."""

    def __init__(self, cin, cout, k, gain=math.sqrt(2), bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.scale = gain / math.sqrt(cin * k * k)
        self.pad = k // 2

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.pad)


class EqLinear(nn.Module):
    def __init__(self, cin, cout, gain=math.sqrt(2), lrmul=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lrmul)
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = gain / math.sqrt(cin) * lrmul
        self.lrmul = lrmul

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias * self.lrmul)


class Blur(nn.Module):
    """Normalised [1,2,1] x [1,2,1] filter, size-preserving, in one of three usual forms:
    "groups"    a depthwise conv2d (ADA's reference upfirdn2d),
    "single"    a one-channel conv2d on [N*C,1,H,W] (rosinality's native upfirdn2d),
    "separable" two one-channel 1-D conv2d passes on [N*C,1,H,W]."""

    def __init__(self, mode, taps=(1.0, 2.0, 1.0)):
        super().__init__()
        k = torch.tensor(taps, dtype=torch.float32)
        k = k / k.sum()
        self.register_buffer("k2", torch.outer(k, k)[None, None])
        self.register_buffer("kh", k.view(1, 1, 1, -1))
        self.register_buffer("kv", k.view(1, 1, -1, 1))
        self.pad = (len(taps) - 1) // 2
        self.mode = mode

    def forward(self, x):
        n, c, h, w = x.shape
        p = self.pad
        if self.mode == "groups":
            return F.conv2d(x, self.k2.expand(c, 1, -1, -1), padding=p, groups=c)
        y = x.reshape(n * c, 1, h, w)
        if self.mode == "single":
            y = F.conv2d(y, self.k2, padding=p)
        else:
            y = F.conv2d(F.conv2d(y, self.kh, padding=(0, p)), self.kv, padding=(p, 0))
        return y.view(n, c, h, w)


class Epilogue(nn.Module):
    """noise -> bias -> lrelu -> instance norm -> style x*(1+s)+b."""

    def __init__(self, c, wdim):
        super().__init__()
        self.noise_strength = nn.Parameter(torch.zeros(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.style = EqLinear(wdim, 2 * c, gain=1.0)

    def forward(self, x, w):
        n, c, h, wd = x.shape
        noise = torch.randn(n, 1, h, wd)
        x = x + noise * self.noise_strength.view(1, -1, 1, 1)
        x = F.leaky_relu(x + self.bias.view(1, -1, 1, 1), LRELU)
        x = F.instance_norm(x, eps=EPS)
        s = self.style(w)
        return x * (1 + s[:, :c, None, None]) + s[:, c:, None, None]


class Generator(nn.Module):
    def __init__(self, res, ch, zdim, wdim, nmap, lrmul, fbase, fdecay, fmax, blur):
        super().__init__()
        self.log2r = int(math.log2(res))
        self.nlayers = 2 * self.log2r - 2
        f = lambda s: nf(s, fbase, fdecay, fmax)
        layers = []
        for i in range(nmap):
            layers.append(EqLinear(zdim if i == 0 else wdim, wdim, lrmul=lrmul))
        self.mapping = nn.ModuleList(layers)
        c = f(1)
        self.const = nn.Parameter(torch.ones(1, c, 4, 4))
        self.epi = nn.ModuleList()
        self.convs = nn.ModuleList()
        self.epi.append(Epilogue(c, wdim))
        self.convs.append(EqConv2d(c, c, 3, bias=False))
        self.epi.append(Epilogue(c, wdim))
        for r in range(3, self.log2r + 1):
            cin, c = f(r - 2), f(r - 1)
            self.convs.append(EqConv2d(cin, c, 3, bias=False))  # conv0_up
            self.epi.append(Epilogue(c, wdim))
            self.convs.append(EqConv2d(c, c, 3, bias=False))  # conv1
            self.epi.append(Epilogue(c, wdim))
        self.torgb = EqConv2d(c, ch, 1, gain=1.0)
        self.blur = Blur(blur)

    def map(self, z):
        x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + EPS)
        for layer in self.mapping:
            x = F.leaky_relu(layer(x), LRELU)
        return x

    def synthesis(self, ws):
        x = self.const.expand(ws[0].shape[0], -1, -1, -1)
        x = self.epi[0](x, ws[0])
        x = self.epi[1](self.convs[0](x), ws[1])
        for i, r in enumerate(range(3, self.log2r + 1)):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.blur(self.convs[1 + 2 * i](x))
            x = self.epi[2 + 2 * i](x, ws[2 + 2 * i])
            x = self.epi[3 + 2 * i](self.convs[2 + 2 * i](x), ws[3 + 2 * i])
        return self.torgb(x)

    def forward(self, z1, z2=None, cutoff=0):
        w1 = self.map(z1)
        ws = [w1] * self.nlayers
        if z2 is not None and cutoff > 0:
            w2 = self.map(z2)
            ws = [w1 if i < cutoff else w2 for i in range(self.nlayers)]
        return self.synthesis(ws), w1


class DBlock(nn.Module):
    """conv 3x3 -> lrelu -> blur -> conv 3x3 -> 2x average -> bias -> lrelu."""

    def __init__(self, cin, cout, blur):
        super().__init__()
        self.conv0 = EqConv2d(cin, cin, 3)
        self.conv1 = EqConv2d(cin, cout, 3, bias=False)
        self.bias1 = nn.Parameter(torch.zeros(cout))
        self.blur = Blur(blur)

    def forward(self, x):
        x = F.leaky_relu(self.conv0(x), LRELU)
        x = F.avg_pool2d(self.conv1(self.blur(x)), 2)
        return F.leaky_relu(x + self.bias1.view(1, -1, 1, 1), LRELU)


class Discriminator(nn.Module):
    def __init__(self, res, ch, fbase, fdecay, fmax, blur, group=4):
        super().__init__()
        self.log2r = int(math.log2(res))
        f = lambda s: nf(s, fbase, fdecay, fmax)
        self.fromrgb = EqConv2d(ch, f(self.log2r - 1), 1)
        self.blocks = nn.ModuleList(DBlock(f(r - 1), f(r - 2), blur) for r in range(self.log2r, 2, -1))
        self.group = group
        self.conv = EqConv2d(f(1) + 1, f(1), 3)
        self.dense0 = EqLinear(f(1) * 16, f(0))
        self.dense1 = EqLinear(f(0), 1, gain=1.0)

    def mbstd(self, x):
        n, c, h, w = x.shape
        g = min(self.group, n)
        while n % g:
            g -= 1
        y = x.reshape(g, -1, c, h, w)  # sample g*M+m is in group m
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = torch.sqrt(y + EPS).mean(dim=[1, 2, 3])  # [M]
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)

    def forward(self, img):
        x = F.leaky_relu(self.fromrgb(img), LRELU)
        for b in self.blocks:
            x = b(x)
        x = self.mbstd(x)
        x = F.leaky_relu(self.conv(x), LRELU)
        x = F.leaky_relu(self.dense0(x.flatten(1)), LRELU)
        return self.dense1(x)


class Twin:
    """The networks, optimizers and state of one training run, and its step."""

    def __init__(self, batch, blur="groups", r1_gamma=10.0, mixing=0.9):
        res, ch, self.zdim, wdim = 32, 3, 128, 128
        self.batch, self.r1_gamma, self.mixing = batch, r1_gamma, mixing
        self.G = Generator(res, ch, self.zdim, wdim, 8, 0.01, 1024, 1.0, 128, blur)
        self.D = Discriminator(res, ch, 1024, 1.0, 128, blur, 4)
        self.Gs = Generator(res, ch, self.zdim, wdim, 8, 0.01, 1024, 1.0, 128, blur).requires_grad_(False)
        self.Gs.load_state_dict(self.G.state_dict())
        self.w_avg = torch.zeros(wdim)
        self.optG = torch.optim.Adam(self.G.parameters(), lr=0.001, betas=(0.0, 0.99), eps=1e-8)
        self.optD = torch.optim.Adam(self.D.parameters(), lr=0.001, betas=(0.0, 0.99), eps=1e-8)
        self.ema_beta = 0.5 ** (batch / 10000.0)
        self.reals = torch.rand(batch, ch, res, res) * 2 - 1

    def latents(self):
        z1 = torch.randn(self.batch, self.zdim)
        if torch.rand(()) < self.mixing:
            return z1, torch.randn(self.batch, self.zdim), int(torch.randint(1, self.G.nlayers, ()))
        return z1, None, 0

    @staticmethod
    def finite(params):
        return all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)

    def step(self):
        """One full step; returns the D loss, G loss and R1 penalty."""
        G, D = self.G, self.D
        # D step: fakes without grad, D on fakes and reals, R1 through the double backward.
        D.requires_grad_(True)
        with torch.no_grad():
            fakes, _ = G(*self.latents())
        reals = self.reals.detach().requires_grad_(True)
        d_fake = D(fakes)
        d_real = D(reals)
        loss_d = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
        (gx,) = torch.autograd.grad(d_real.sum(), reals, create_graph=True)
        r1 = gx.square().sum(dim=[1, 2, 3]).mean() * (self.r1_gamma / 2)
        self.optD.zero_grad(set_to_none=True)
        (loss_d + r1).backward()
        if self.finite(D.parameters()):
            self.optD.step()
        # G step: D frozen.
        D.requires_grad_(False)
        fakes, w = G(*self.latents())
        loss_g = F.softplus(-D(fakes)).mean()
        self.optG.zero_grad(set_to_none=True)
        loss_g.backward()
        if self.finite(G.parameters()):
            self.optG.step()
        with torch.no_grad():
            self.w_avg = torch.lerp(w.mean(dim=0), self.w_avg, 0.995)
            # EMA: Gs = G + beta (Gs - G)
            for ps, p in zip(self.Gs.parameters(), G.parameters()):
                ps.copy_(torch.lerp(p, ps, self.ema_beta))
        return float(loss_d), float(loss_g), float(r1)


def count(m):
    return sum(p.numel() for p in m.parameters())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--r1-gamma", type=float, default=10.0)
    ap.add_argument("--mixing", type=float, default=0.9)
    ap.add_argument("--blur", choices=["groups", "single", "separable"], default="groups",
                    help="how the [1,2,1] blur is written (see Blur); groups is the fastest here: in steps "
                         "alternated in one process on an idle machine, 2.61 s per step against 3.74 s "
                         "(single) and 4.52 s (separable)")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's op table of one timed round")
    ap.add_argument("--serve", action="store_true", help="run one step per 'step' line on stdin (see below)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    tw = Twin(a.batch, a.blur, a.r1_gamma, a.mixing)
    G, D, step = tw.G, tw.D, tw.step

    def checked_step():
        losses = step()
        if not all(math.isfinite(v) for v in losses):
            sys.exit(f"bench_train_torch: non-finite loss (D, G, R1) = {losses}")

    info = (f"batch={a.batch} threads={torch.get_num_threads()} blur={a.blur} g_params={count(G)} "
            f"d_params={count(D)} torch={torch.__version__}")
    if a.serve:
        # One step per "step" line on stdin, answered with its wall and CPU seconds, so that a
        # driver can alternate single steps with another implementation under the same load.
        print("READY " + info, flush=True)
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "quit":
                break
            if cmd != "step":
                sys.exit(f"bench_train_torch: unknown command {cmd!r} (step or quit)")
            w0, c0 = time.perf_counter(), time.process_time()
            checked_step()
            print(f"STEP wall={time.perf_counter() - w0:.6f} cpu={time.process_time() - c0:.6f}", flush=True)
        return
    for _ in range(a.warmup):
        checked_step()
    best = 0.0
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        for _ in range(a.steps):
            checked_step()
        best = max(best, a.steps * a.batch / (time.perf_counter() - t0))
    if a.profile:
        from torch.profiler import profile, ProfilerActivity
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(a.steps):
                step()
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=40),
              file=sys.stderr)
    print(f"BENCH impl=pytorch img_per_s={best:.2f} steps={a.steps} repeats={a.repeats} {info}")

if __name__ == "__main__":
    main()
