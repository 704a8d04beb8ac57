#!/usr/bin/env python3
"""Reads `perf script -F tid,time,event,trace` of hack/profile-train.sh's uprobes and prints
the wall time per training step by kernel op (exclusive of nested kernel calls) and, for
convolutions and FIR, by shape. Steps are delimited by every second Adam call (D, then G);
the first partial period is dropped."""
import collections
import re
import sys

LINE = re.compile(r"^\s*(\d+)\s+([\d.]+):\s+\S+:(\w+):\s+\([0-9a-fx]+(?: <- [0-9a-fx]+)?\)\s*(.*)$")


def main():
    stacks = collections.defaultdict(list)
    adam = 0
    bounds = []  # times of every second adam entry
    calls = []  # (t_start, op, key, exclusive, top_level_duration or None)
    for raw in sys.stdin:
        m = LINE.match(raw)
        if not m:
            continue
        tid, t, ev, args = int(m[1]), float(m[2]), m[3], m[4]
        if ev.endswith("_ret__return"):  # perf probe appends __return to return probes
            op = ev[: -len("_ret__return")]
            st = stacks[tid]
            if not st or st[-1][0] != op:
                continue
            op, key, t0, child = st.pop()
            dur = t - t0
            if st:
                st[-1][3] += dur
            calls.append((t0, op, key, dur - child, dur if not st else None))
        else:
            if ev == "adam":
                adam += 1
                if adam % 2 == 0:
                    bounds.append(t)
            kv = dict(a.split("=", 1) for a in args.split())
            stacks[tid].append([ev, kv_key(ev, kv), t, 0.0])
    if len(bounds) < 2:
        sys.exit("profile_train: fewer than two step boundaries in the trace")
    lo, hi = bounds[0], bounds[-1]
    steps = len(bounds) - 1
    wall = hi - lo
    by_op = collections.Counter()
    n_op = collections.Counter()
    by_key = collections.Counter()
    n_key = collections.Counter()
    top = 0.0
    for t0, op, key, excl, topdur in calls:
        if not lo <= t0 < hi:
            continue
        by_op[op] += excl
        n_op[op] += 1
        if key:
            by_key[(op, key)] += excl
            n_key[(op, key)] += 1
        if topdur is not None:
            top += topdur
    ms = lambda s: 1000.0 * s / steps
    print(f"profile: {steps} steps, {wall / steps:.3f} s per step (wall), "
          f"{32 * steps / wall:.2f} img/s at batch 32")
    print(f"{'op':<22}{'ms/step':>10}{'share':>8}{'calls/step':>12}")
    for op, s in by_op.most_common():
        print(f"{op:<22}{ms(s):>10.1f}{100 * s / wall:>7.1f}%{n_op[op] / steps:>12.1f}")
    go = wall - top
    print(f"{'(Go, between kernels)':<22}{ms(go):>10.1f}{100 * go / wall:>7.1f}%")
    print()
    print(f"{'op / shape':<58}{'ms/step':>10}{'calls':>7}{'ms/call':>9}")
    for (op, key), s in by_key.most_common():
        c = n_key[(op, key)]
        print(f"{op + ' ' + key:<58}{ms(s):>10.1f}{c / steps:>7.0f}{1000 * s / c:>9.2f}")


def kv_key(ev, kv):
    if ev.startswith("conv"):
        return f"x[{kv['n']},{kv['c']},{kv['h']}] w[{kv['co']},{kv['c']},{kv['k']}x{kv['k']}] s{kv['s']}"
    if ev == "fir":
        return f"x[{kv['n']},{kv['c']},{kv['h']}] up{kv['up']} down{kv['down']}"
    return ""


if __name__ == "__main__":
    main()
