"""The built-in doodle generator: throughput, and batched humanising/RDP against one sketch at a time.

Prints JSON (and writes `$OUT/doodles.json` when OUT is set). `generate_s` is the wall time of
`make_doodles(n)` for all five categories; `process_*` time only the humanise + QuickDraw
processing stage on the same drawings, batched (as `make_doodles` does) and one sketch at a time.
"""

import sys
import time

import numpy as np

from report import emit
from sketchlab.data import synthetic as Y


def main(n: int = 2000) -> dict:
    t0 = time.perf_counter()
    sketches = Y.make_doodles(n)
    generate = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    drawings, sketch_params, stroke_params = [], [], []
    for i in range(500):
        name = Y.CATEGORIES[i % len(Y.CATEGORIES)]
        strokes = Y.DRAW[name](int(rng.integers(len(Y.STYLES[name]))), rng)
        a, b = Y._draw_params(len(strokes), rng)
        drawings.append(strokes)
        sketch_params.append(a)
        stroke_params.append(b)
    t0 = time.perf_counter()
    batched = Y._humanise(drawings, np.stack(sketch_params), np.concatenate(stroke_params))
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [Y._humanise([d], a[None], b)[0] for d, a, b in zip(drawings, sketch_params, stroke_params)]
    t_single = time.perf_counter() - t0
    same = all(np.array_equal(x, y) for x, y in zip(batched, single))
    result = {"benchmark": "doodles", "n_per_category": n, "sketches": len(sketches),
              "generate_s": round(generate, 3), "sketches_per_s": round(len(sketches) / generate),
              "mean_points": round(float(sketches.lengths.mean()), 1),
              "process_batched_s": round(t_batched, 4), "process_one_at_a_time_s": round(t_single, 4),
              "process_speedup": round(t_single / t_batched, 2), "identical": same}
    return emit(result, "doodles", indent=None)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
