"""Time the whole evaluation of N generated sketches (render + features + every metric) and the
fast paths against plain references, in one run. Prints JSON (and writes $OUT/evaluate.json).

    OMP_NUM_THREADS=1 python benchmarks/evaluate.py --plain-gs-runs 8   # CPU: small N
    python benchmarks/evaluate.py --n 2500 --device cuda --classifier runs/clf
    python benchmarks/evaluate.py --n 2500 --data-dir data/spg20 --classifier runs/clf

The evaluation scores N samples plus a real row of N against a reference of N (3N sketches
rendered and classified). Without --classifier a randomly initialised Sketch-a-Net stands in (same
cost); without --data-dir the sketches are synthetic random scribbles.

Plain references, each timed in the same run:
* features: one image per forward pass (on a subset) vs batches;
* precision/recall: full float64 scipy distance matrices + np.partition (the official algorithm
  written plainly) vs blocked torch;
* Ret: the seeds' loop (MSE to every gallery code per query, argsort) vs blocked expansion;
* rendering: batched vs one sketch per call;
* GS: serial runs vs the process pool (one set, --plain-gs-runs runs);
* FID: scipy sqrtm vs the eigh formulation.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from report import emit  # noqa: E402  (benchmarks/report.py)
from sketchlab.data.sketches import Sketches  # noqa: E402
from sketchlab.data.sketches import Sketches
from sketchlab.eval.judge import SketchANetFeatures  # noqa: E402
from sketchlab.eval import evaluate as E  # noqa: E402
from sketchlab.eval import metrics as M  # noqa: E402
from sketchlab.eval.topology import default_workers  # noqa: E402
from sketchlab.models.sketch_a_net import Config, SketchANet  # noqa: E402
from sketchlab.runs import load_judge  # noqa: E402


def renderer() -> str:
    try:
        import sketchlab.data.raster  # noqa: F401
        return "sketchlab.data.raster"
    except ImportError:
        sys.path.insert(0, str(ROOT / "tests"))
        import raster_standin

        raster_standin.install()
        return "PIL stand-in (tests/raster_standin.py): sketchlab.data.raster is missing"


def scribbles(n: int, n_cat: int, rng: np.random.Generator) -> Sketches:
    """Random multi-stroke scribbles of 20-120 points, categories round-robin."""
    out = []
    for _ in range(n):
        length = int(rng.integers(20, 120))
        pts = rng.normal(0, 8, size=(length, 3)).astype(np.float32)
        pts[:, 2] = (rng.random(length) < 0.1).astype(np.float32)
        pts[-1, 2] = 1
        out.append(pts)
    cat = np.arange(n) % n_cat
    return Sketches.from_list(out, category=cat, category_names=[f"c{i}" for i in range(n_cat)])


def timed(fn, *a, repeat: int = 1, sync=None, **kw):
    best = float("inf")
    for _ in range(repeat):
        if sync:
            sync()
        t = time.perf_counter()
        out = fn(*a, **kw)
        if sync:
            sync()
        best = min(best, time.perf_counter() - t)
    return out, best


def plain_precision_recall(real, fake, k=3):
    from scipy.spatial.distance import cdist

    def radii(x):
        return np.partition(cdist(x, x, "sqeuclidean"), k, axis=1)[:, k]

    def coverage(q, m, r):
        return float(np.mean((cdist(q, m, "sqeuclidean") <= r[None, :]).any(1)))

    return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


def plain_retrieval(gallery, queries, k=50):
    hits = np.zeros(3)
    for i, q in enumerate(queries):
        d = np.mean((gallery - q) ** 2, axis=1)
        top = np.argsort(d, kind="stable")[:k]
        hits += [i in top[:1], i in top[:10], i in top[:50]]
    return hits / len(queries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="generated sketches (default 2500 on "
                                                        "CUDA, 300 on CPU)")
    ap.add_argument("--categories", type=int, default=20)
    ap.add_argument("--classifier", help="a trained classifier run (default: random weights)")
    ap.add_argument("--data-dir", help="real data instead of scribbles (see --splits)")
    ap.add_argument("--splits", default="test,valid,train",
                    help="with --data-dir: the splits standing in for samples,reference,real")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--gs-runs", type=int, default=100)
    ap.add_argument("--plain-gs-runs", type=int, default=100)
    ap.add_argument("--plain-feature-images", type=int, default=64)
    args = ap.parse_args()

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    n = args.n or (2500 if device.type == "cuda" else 300)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    rng = np.random.default_rng(0)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
              platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "torch": torch.__version__, "n": n,
              "renderer": renderer()}

    if args.classifier:
        judge = load_judge(args.classifier, device=device)
        cats = list(judge.categories)
    else:
        cats = [f"c{i}" for i in range(args.categories)]
        torch.manual_seed(0)
        model = SketchANet(Config(num_classes=len(cats)))
        model.categories = tuple(cats)
        judge = SketchANetFeatures(model, device)
    report["classifier"] = args.classifier or "random Sketch-a-Net"

    if args.data_dir:
        per = -(-n // len(cats))
        names = args.splits.split(",")
        samples, reference, real = (E.load_split(args.data_dir, cats, sp, per) for sp in names)
    else:
        samples, reference, real = (scribbles(n, len(cats), rng) for _ in range(3))
        if args.classifier:
            for s in (samples, reference, real):
                s.category_names = tuple(cats[: len(s.category_names)])
    report["sets"] = {"samples": len(samples), "reference": len(reference), "real": len(real)}

    # Warm up (CUDA context, cuDNN autotuning, the process pool's imports are in the timing).
    judge.extract(samples.select(np.arange(min(64, len(samples)))))

    cfg = E.EvalConfig(gs_runs=args.gs_runs)
    result, total = timed(E.evaluate_sets, {"samples": samples}, reference, judge, real=real,
                          config=cfg, sync=sync)
    report["evaluation"] = {"total_s": round(total, 3),
                            "phases_s": {k: round(v, 3) for k, v in result["timings"].items()},
                            "gs_runs": cfg.gs_runs,
                            "gs_workers": default_workers(cfg.gs_runs * 3, n),
                            "rows": [{k: v for k, v in r.items() if k != "rec@1_per_category"}
                                     for r in result["rows"]]}

    # --- rendering alone: batched (the GPU rasterizer on CUDA) vs one sketch per call
    def render_all(items, bs):
        for i in range(0, len(items), bs):
            judge.images(items[i:i + bs])

    items = list(samples)
    _, t_render = timed(render_all, items, judge.batch_size, sync=sync)
    _, t_render1 = timed(render_all, items[: args.plain_feature_images], 1, sync=sync)
    per_b, per_1 = t_render / len(items), t_render1 / min(len(items), args.plain_feature_images)
    report["render"] = {"batched_sketches_per_s": round(1 / per_b, 1),
                        "one_by_one_sketches_per_s": round(1 / per_1, 1),
                        "speedup": round(per_1 / per_b, 2)}

    # --- features: batched vs one image per forward pass (render included)
    sub = list(samples)[: args.plain_feature_images]
    (feats_s, _), t_batched = timed(judge.extract, samples, sync=sync)

    def one_by_one():
        with torch.inference_mode():
            for s in sub:
                judge.features_and_logits(judge.images([s]))

    _, t_single = timed(one_by_one, sync=sync)
    per_batched, per_single = t_batched / len(samples), t_single / len(sub)
    report["features"] = {"batched_sketches_per_s": round(1 / per_batched, 1),
                          "one_by_one_sketches_per_s": round(1 / per_single, 1),
                          "speedup": round(per_single / per_batched, 2)}

    feats_r, _ = judge.extract(reference)
    feats_s, feats_r = feats_s.astype(np.float64), feats_r.astype(np.float64)

    # --- precision/recall
    fast, t_fast = timed(M.precision_recall, feats_r, feats_s, device=device, sync=sync, repeat=2)
    plain, t_plain = timed(plain_precision_recall, feats_r, feats_s)
    report["precision_recall"] = {"fast_s": round(t_fast, 4), "plain_s": round(t_plain, 4),
                                  "speedup": round(t_plain / t_fast, 2), "agree": fast == plain}

    # --- Ret on 128-d codes
    gallery = rng.normal(size=(len(samples), 128))
    queries = gallery + rng.normal(size=gallery.shape) * 0.7
    fast, t_fast = timed(M.retrieval_metrics, gallery, queries, device=device, sync=sync, repeat=2)
    plain, t_plain = timed(plain_retrieval, gallery, queries)
    report["retrieval"] = {"fast_s": round(t_fast, 4), "plain_s": round(t_plain, 4),
                           "speedup": round(t_plain / t_fast, 2),
                           "agree": bool(np.allclose(list(fast.values()), plain))}

    # --- FID: sqrtm vs eigh
    stats = (*M.feature_statistics(feats_s), *M.feature_statistics(feats_r))
    a, t_sqrtm = timed(M.frechet_distance, *stats, method="sqrtm")
    b, t_eigh = timed(M.frechet_distance, *stats, method="eigh")
    report["fid"] = {"sqrtm_s": round(t_sqrtm, 4), "eigh_s": round(t_eigh, 4),
                     "speedup": round(t_sqrtm / t_eigh, 2), "sqrtm": a, "eigh": b}

    # --- GS: serial vs pool on a few runs
    kw = dict(n=args.plain_gs_runs, seeds=[0])
    serial, t_serial = timed(M.rlts, [feats_s], workers=1, **kw)
    workers = min(os.cpu_count() or 1, args.plain_gs_runs)
    pooled, t_pool = timed(M.rlts, [feats_s], workers=workers, **kw)
    report["geometry_score"] = {"runs": args.plain_gs_runs, "workers": workers,
                                "serial_s": round(t_serial, 3),
                                "pool_s": round(t_pool, 3), "speedup": round(t_serial / t_pool, 2),
                                "agree": bool(np.array_equal(serial[0], pooled[0]))}

    emit(report, "evaluate")


if __name__ == "__main__":
    main()
