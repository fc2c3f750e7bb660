#!/usr/bin/env python3
"""D_mse of the TurboQuant Lloyd-Max codebooks with their centroids snapped to an int8 grid.

The coordinates of a randomly rotated unit vector of dimension d have density
(1 - u^2/d)^((d-3)/2) in u = t*sqrt(d) units (docs/turboquant.md). This solves the Lloyd-Max
conditions for that density by numerical integration (plain Python, no dependencies), then
snaps the centroids to multiples of max|c|/127 (what an int8 tensor-core decode would hold)
and reports the per-coordinate MSE before and after: with the boundaries moved to the new
midpoints, and with the encoder keeping the exact boundaries.
usage: scripts/codebook-int8-grid.py [d=256]
"""
import math
import sys

d = int(sys.argv[1]) if len(sys.argv) > 1 else 256
N, LO, HI = 40001, -7.0, 7.0
STEP = (HI - LO) / (N - 1)
XS = [LO + i * STEP for i in range(N)]
W = [(1 - x * x / d) ** ((d - 3) / 2) if abs(x) < math.sqrt(d) else 0.0 for x in XS]
Z = sum(W) * STEP
W = [v / Z for v in W]


def mse(c, b):
    total, j = 0.0, 0
    for x, p in zip(XS, W):
        while j < len(b) and x > b[j]:
            j += 1
        total += p * (x - c[j]) ** 2
    return total * STEP


def midpoints(c):
    return [(c[i] + c[i + 1]) / 2 for i in range(len(c) - 1)]


def lloyd_max(levels, iterations=300):
    c = [-2 + 4 * (i + 0.5) / levels for i in range(levels)]
    for _ in range(iterations):
        b = midpoints(c)
        num, den, j = [0.0] * levels, [0.0] * levels, 0
        for x, p in zip(XS, W):
            while j < levels - 1 and x > b[j]:
                j += 1
            num[j] += p * x
            den[j] += p
        c = [num[i] / den[i] for i in range(levels)]
    half = levels // 2  # the density is even: average the two halves
    c = [(c[i] - c[levels - 1 - i]) / 2 if i >= half else -(c[levels - 1 - i] - c[i]) / 2 for i in range(levels)]
    return c


for bits in (2, 3, 4):
    c = lloyd_max(1 << bits)
    m0 = mse(c, midpoints(c))
    s = max(abs(v) for v in c) / 127
    q = [round(v / s) for v in c]
    c8 = [k * s for k in q]
    m1, m2 = mse(c8, midpoints(c8)), mse(c8, midpoints(c))
    print(f"d={d} {bits}-bit: centroids {[round(v, 4) for v in c]}")
    print(f"  int8 grid {q}, largest shift {max(abs(a - b) for a, b in zip(c, c8)):.4f}")
    print(f"  D_mse per coordinate {m0:.6f} -> {m1:.6f} ({100 * (m1 / m0 - 1):+.3f}%) with new midpoints, "
          f"{m2:.6f} ({100 * (m2 / m0 - 1):+.3f}%) with the exact boundaries")
