"""Benchmark: QuickDraw data I/O against the plain way, in the same run.

* `rdp`: the import's batched RDP (`strokes.rdp_many`, 2,000 drawings per pass) against
  the plain per-stroke `strokes.rdp`, on the dense SPG strokes (results must be identical);
* `load`: the safe sketch-rnn reader (`load_npz`, restricted unpickler + validation into
  `Sketches`) against `np.load(allow_pickle=True)` (trusted shared file only, for reference);
* `import`: `sketchlab data import` of the whole spg20 folder (14,000 drawings), sketches/s.

Prints one JSON object and writes it to $OUT/quickdraw_io.json when OUT is set. Needs the shared
data folder (SKETCHLAB_SHARED_DATA, default ../shared/data).

    PYTHONPATH=src python benchmarks/quickdraw_io.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from report import emit  # noqa: E402  (benchmarks/report.py)
from sketchlab.data.ndjson import import_ndjson  # noqa: E402
from sketchlab.data.npz import SPLITS, load_npz  # noqa: E402
from sketchlab.data import strokes as S  # noqa: E402
from sketchlab.data.strokes import rdp  # noqa: E402

DATA = Path(os.environ.get("SKETCHLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


def _timed(fn, repeats=3):
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def bench_rdp(n_drawings: int = 2000) -> dict:
    files = sorted((DATA / "spg20").glob("*.ndjson"))
    drawings = []
    for path in files:  # the first drawings of every category
        with open(path) as fh:
            lines = fh.readlines()[: n_drawings // len(files)]
        drawings += [[np.array(s[:2], dtype=np.float64).T for s in json.loads(line)["drawing"]]
                     for line in lines]
    polylines = [p for d in drawings for p in d]
    t_plain, plain = _timed(lambda: [rdp(p, 2.0) for p in polylines], repeats=1)
    t_fast, fast = _timed(lambda: S.rdp_many(polylines, 2.0))
    same = all(np.array_equal(a, b) for a, b in zip(plain, fast))
    return {"drawings": len(drawings), "polylines": len(polylines),
            "points": int(sum(len(p) for p in polylines)), "plain_s": round(t_plain, 4),
            "batched_s": round(t_fast, 4), "speedup": round(t_plain / t_fast, 2),
            "identical": same}


def bench_load() -> dict:
    path = DATA / "sketchrnn" / "omniglot.npz"

    def unsafe():  # reference only: a trusted file; never do this with a user's file
        with np.load(path, allow_pickle=True, encoding="latin1") as f:
            return {s: list(f[s]) for s in SPLITS}

    t_plain, ref = _timed(unsafe)
    t_safe, got = _timed(lambda: load_npz(path))
    n = sum(len(v) for v in ref.values())
    return {"file": path.name, "sketches": n, "np_load_pickle_s": round(t_plain, 4),
            "safe_load_s": round(t_safe, 4), "ratio_safe_over_plain": round(t_safe / t_plain, 2),
            "same": all(np.array_equal(got[s].lengths, [len(x) for x in ref[s]]) for s in ref)}


def bench_import() -> dict:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        report = import_ndjson([DATA / "spg20"], out, progress=False)
        seconds = time.perf_counter() - t0
    return {"sketches": report["imported"], "seconds": round(seconds, 2),
            "sketches_per_s": round(report["imported"] / seconds, 1)}


def main() -> dict:
    if not DATA.is_dir():
        result = {"benchmark": "quickdraw_io", "skipped": f"no shared data at {DATA}"}
    else:
        result = {"benchmark": "quickdraw_io", "rdp": bench_rdp(), "load": bench_load(),
                  "import_spg20": bench_import()}
    return emit(result, "quickdraw_io", indent=1)


if __name__ == "__main__":
    main()
