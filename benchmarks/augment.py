"""sketch-rnn's point dropping (`augment_strokes`, used by every training batch of sketch-rnn,
RPCL and SketchGloc): the vectorised version against the seeds' per-point loop, same inputs and
generator seeds, on real SPG sketches when available (else the built-in doodles).

Prints JSON (and writes `$OUT/augment.json` when OUT is set): seconds for each, their ratio and
whether every output matched.

    SPG20=data/spg20 python benchmarks/augment.py
"""

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from report import emit  # noqa: E402  (benchmarks/report.py)
from sketchlab.data.strokes import augment_strokes, augment_strokes_reference  # noqa: E402


def sketches(n: int) -> tuple[list[np.ndarray], str]:
    spg = os.environ.get("SPG20", ".gpu/spg20")
    if Path(spg, "airplane.npz").is_file():
        from sketchlab.data.sources import load_categories

        sk = load_categories(spg, ["airplane", "apple", "butterfly", "cactus", "pig"],
                             splits=("train",))["train"]
        return [sk[i] for i in range(min(n, len(sk)))], f"SPG ({spg})"
    from sketchlab.data.synthetic import make_doodles

    sk = make_doodles(n // 5 + 1)
    return [sk[i] for i in range(min(n, len(sk)))], "built-in doodles"


def main(n: int = 3000, prob: float = 0.1) -> dict:
    data, source = sketches(n)
    t0 = time.perf_counter()
    slow = [augment_strokes_reference(s, prob, np.random.default_rng(i)) for i, s in enumerate(data)]
    t_slow = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = [augment_strokes(s, prob, np.random.default_rng(i)) for i, s in enumerate(data)]
    t_fast = time.perf_counter() - t0
    same = all(a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=1e-4)
               for a, b in zip(slow, fast))
    result = {"benchmark": "augment_strokes", "source": source, "sketches": len(data),
              "points": int(sum(map(len, data))), "prob": prob,
              "loop_s": round(t_slow, 4), "vectorised_s": round(t_fast, 4),
              "speedup": round(t_slow / t_fast, 2), "identical": same}
    return emit(result, "augment", indent=None)


if __name__ == "__main__":
    main()
