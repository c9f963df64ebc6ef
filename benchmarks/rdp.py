"""Batched RDP (`rdp_mask`) against the plain per-polyline `rdp`, on QuickDraw-like strokes.

Prints JSON (and writes `$OUT/rdp.json` when OUT is set): seconds for each and their ratio.
"""

import time

import numpy as np

from report import emit
from sketchlab.data.strokes import rdp, rdp_many


def main(n_lines: int = 3000) -> dict:
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(n_lines):  # wobbly arcs at about 1-3 px spacing, rounded to integers
        n = int(rng.integers(20, 200))
        t = np.linspace(0, rng.uniform(1, 6), n)
        r = rng.uniform(20, 120) * (1 + 0.05 * np.sin(rng.uniform(2, 9) * t))
        lines.append(np.round(np.stack([128 + r * np.cos(t), 128 + r * np.sin(t)], 1)))
    t0 = time.perf_counter()
    plain = [rdp(line, 2.0) for line in lines]
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = rdp_many(lines, 2.0)
    t_fast = time.perf_counter() - t0
    same = all(np.array_equal(a, b) for a, b in zip(plain, fast))
    result = {"benchmark": "rdp", "polylines": n_lines, "points": int(sum(map(len, lines))),
              "plain_s": round(t_plain, 4), "batched_s": round(t_fast, 4),
              "speedup": round(t_plain / t_fast, 2), "identical": same}
    return emit(result, "rdp", indent=None)


if __name__ == "__main__":
    main()
