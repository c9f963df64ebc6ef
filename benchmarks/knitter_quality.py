"""SketchKnitter on one category in minutes: sample a trained run with DDPM-1000, DDIM-30 and the
r-Shortcut-30, timing each sampler and scoring FID / precision / recall / Rec against the run's
held-out real sketches with a trained sketchlab classifier.

    sketchlab data import ../shared/data/spg20 --out data/spg20
    sketchlab train sketchknitter --data-dir data/spg20 --categories apple --out runs/knitter-apple \
        --max-minutes 8 --hparams "batch_size=256"
    sketchlab classifier train --data-dir data/spg20 --categories ... --out runs/clf
    python benchmarks/knitter_quality.py --run runs/knitter-apple --classifier runs/clf

The r-Shortcut is calibrated here from the classifier (as `sketchlab sample --classifier` does).
The reference set is the run's test split (plus valid with --with-valid). Prints JSON and writes
$OUT/knitter_quality.json, the samples and PNG grids when OUT is set.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from report import emit, out_dir  # noqa: E402  (benchmarks/report.py)
from sketchlab.data.sources import load_splits  # noqa: E402
from sketchlab.data.sketches import Sketches  # noqa: E402
from sketchlab.data.sketches import Sketches
from sketchlab.models.knitter_shortcut import calibrate_shortcut, classifier_score_fn  # noqa: E402
from sketchlab.render import save_grid  # noqa: E402
from sketchlab.train import checkpoint as ckpt  # noqa: E402
from sketchlab.runs import load_judge, load_model  # noqa: E402


def progress(result: dict) -> None:
    """Print the result so far and keep it on disk: a run cut by its time limit keeps its stages."""
    emit(result, "knitter_quality")


def evaluate(args) -> dict:
    device = torch.device(args.device)
    run = Path(args.run)
    info = ckpt.read_run_config(run, expect_model="sketchknitter")
    model = load_model(run, device=device)
    raw = load_splits(info.get("data_dir"), info.get("categories") or None,
                      limit_per_category=info.get("limit_per_category"))
    reference = raw["test"] if not args.with_valid else Sketches.concat([raw["test"], raw["valid"]])
    reference = type(model).filter_sketches(model.config, reference)
    cat = reference.category_names[0]
    n = args.n or len(reference)
    result = {"category": cat, "run": str(run), "n_samples": n, "reference": len(reference),
              "reference_mean_abs_offset": float(np.abs(reference.points[:, :2]).mean()
                                                 * reference.scale_factor)}

    judge = None
    T = model.diffusion.num_timesteps
    S = 30 if T >= 1000 else 10  # the stride rule cannot make 30 of a smoke run's 50 or 100 steps
    samplers = [(f"ddpm{T}", dict(sampler="ddpm")), (f"ddim{S}", dict(sampler="ddim", steps=S))]
    if model.config.clip is not None and not model.config.faithful:
        # the clean default clamps x0_hat to the data bound; score DDIM without it as well
        samplers.append((f"ddim{S}_noclamp", dict(sampler="ddim", steps=S, clip_x0=None)))
    result["clip_x0"] = model.config.clip
    if args.classifier:
        judge = load_judge(args.classifier, device)
        score_fn = classifier_score_fn(judge, list(reference.category_names))

        t = time.perf_counter()
        _, curve, cal = calibrate_shortcut(
            model, score_fn, n_sketches=args.calib_sketches, batch_size=256,
            record_steps=args.record_steps, epochs=args.recognizer_epochs, pilot=256,
            target_on=args.target_on, device=device,
            generator=torch.Generator(device).manual_seed(1), progress=False)
        result["rshortcut"] = {"calibration_seconds": time.perf_counter() - t,
                               "recognizer_bce": cal["bce"], "tuples": cal["tuples"],
                               "curve_at": {str(t): float(curve[t]) for t in
                                            (999, 800, 600, 400, 200, 100, 50, 20, 0)
                                            if t < len(curve)},
                               "timesteps": model.make_sampler("rshortcut", S).timesteps}
        progress(result)
        samplers.append((f"rshortcut{S}", dict(sampler="rshortcut", steps=S)))

    samples = {}
    config = model.config
    for name, kw in samplers:
        kw = dict(kw)
        model.config = dataclasses.replace(config, clip_x0=kw.pop("clip_x0", config.clip_x0))
        model.generate(args.batch, batch_size=args.batch, device=device, **kw)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        sk = model.generate(n, batch_size=args.batch, device=device,
                            generator=torch.Generator(device).manual_seed(0), **kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
        sec = time.perf_counter() - t
        # DDIM's overshoot shows here first: mean |dx, dy| against the reference's (raw units)
        abs_offset = float(np.abs(sk.points[:, :2]).mean() * sk.scale_factor)
        sk = sk.in_units(1.0)
        sk.category = np.zeros(len(sk), np.int64)
        sk.category_names = (cat,)
        samples[name] = sk
        result.setdefault("sampling", {})[name] = {"seconds": sec, "sketches_per_s": n / sec,
                                                   "mean_points": float(sk.lengths.mean()),
                                                   "mean_abs_offset": abs_offset}
        progress(result)
        if out_dir():
            save_grid(sk[np.arange(min(48, len(sk)))], out_dir() / f"knitter_{name}.png", cols=8)
    model.config = config

    if judge is not None:
        from sketchlab.eval.evaluate import EvalConfig, evaluate_sets

        scores = evaluate_sets(samples, reference, judge, config=EvalConfig(gs=args.gs))
        result["metrics"] = {row["set"]: {k: row[k] for k in ("fid", "precision", "recall",
                                                              "rec@1", "gs_x1000") if k in row}
                             for row in scores["rows"]}
        result["metrics_protocol"] = scores["protocol"]
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a `sketchlab train sketchknitter` run")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--with-valid", action="store_true", help="reference = test + valid splits")
    ap.add_argument("--classifier", help="a `sketchlab classifier train` run knowing the category")
    ap.add_argument("--n", type=int, default=None, help="samples per sampler (default: reference size)")
    ap.add_argument("--calib-sketches", type=int, default=512)
    ap.add_argument("--record-steps", type=int, default=50)
    ap.add_argument("--recognizer-epochs", type=int, default=10)
    ap.add_argument("--target-on", default="x_t", choices=("x_t", "x0_hat"))
    ap.add_argument("--gs", action="store_true", help="also the Geometry Score (slow)")
    args = ap.parse_args(argv)
    progress(evaluate(args))


if __name__ == "__main__":
    main()
