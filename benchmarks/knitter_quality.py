"""SketchKnitter on one category in minutes: train, then sample with DDPM-1000, DDIM-30 and the
r-Shortcut-30, timing each sampler and scoring FID / precision / recall / Rec against held-out
real sketches with a trained sketchlab classifier.

Two phases, so each fits one GPU command (the run folder persists between them):

    # 1. train (time-limited; writes RUN/model.safetensors, config.json, reference.npz, log)
    python benchmarks/knitter_quality.py train --ndjson ../shared/data/spg20/apple.ndjson \
        --run runs/knitter-apple --minutes 8
    # 2. calibrate the r-Shortcut from the classifier, sample, time, score
    python benchmarks/knitter_quality.py evaluate --run runs/knitter-apple --classifier CLF

Data: `--ndjson` reads an SPG/QuickDraw ndjson file (RDP eps 2 via sketchlab.data.quickdraw)
with the `splits.json` beside it, or `--data-dir DIR --category NAME` reads an imported npz.
The reference set is the valid split plus `--carve` sketches taken off the end of the training
split (the SPG test split is withheld). Needs sketchlab.data.quickdraw and, for `evaluate`,
sketchlab.eval (classifier, evaluate) and optionally sketchlab.data.raster for a PNG grid.
Prints JSON and writes $OUT/knitter_quality.json (and the samples, PNGs) when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sketchlab.data.strokes import Sketches, normalize  # noqa: E402
from sketchlab.models.sketchknitter import Config, SketchKnitter, calibrate_shortcut  # noqa: E402


def out_dir() -> Path | None:
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else None


def load_splits(args) -> tuple[str, list[np.ndarray], list[np.ndarray]]:
    """(category, train sketches, reference sketches), raw units."""
    if args.ndjson:
        from sketchlab.data.quickdraw import detect_format, drawing_to_stroke3

        path = Path(args.ndjson)
        cat = path.name.split(".")[0]
        splits = json.loads((path.parent / "splits.json").read_text())[cat]
        by_key = {}
        for line in path.read_text().splitlines():
            obj = json.loads(line)
            try:
                by_key[str(obj["key_id"])] = drawing_to_stroke3(obj["drawing"], detect_format(obj))
            except Exception:  # a malformed drawing: skip it, as the importer would
                continue
        train = [by_key[k] for k in splits["train"] if k in by_key]
        valid = [by_key[k] for k in splits.get("valid", []) if k in by_key]
    else:
        from sketchlab.data.quickdraw import load_categories

        cat = args.category
        data = load_categories(args.data_dir, [cat], splits=("train", "valid"))
        train, valid = data["train"].to_list(), data["valid"].to_list()
    carve = min(args.carve, len(train) // 2)
    reference = valid + train[len(train) - carve:]
    train = train[:len(train) - carve]
    return cat, [np.asarray(s, np.float32) for s in train], [np.asarray(s, np.float32) for s in reference]


def train(args) -> dict:
    device = torch.device(args.device)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    cat, train_set, reference = load_splits(args)
    small = dict(diffusion_steps=50, channel_mult=(1, 2), num_res_blocks=1) if args.smoke else {}
    cfg = Config(**{"faithful": args.faithful, "num_res_blocks": args.num_res_blocks, "lr": args.lr,
                    "batch_size": args.batch, "ema_rate": args.ema_rate,
                    "random_scale": args.random_scale, **small})
    torch.manual_seed(args.seed)
    model = SketchKnitter(cfg)
    kept = [s for s in train_set if model.keep_sketch(s)]
    scale = model.compute_scale_factor(kept)
    data = [normalize(s, scale) for s in kept]
    model.set_data_stats(scale, lengths=[len(s) for s in data])
    model.to(device).train()
    Sketches.from_list(reference, category=0, category_names=(cat,)).save(run / "reference.npz")

    opt = model.configure_optimizer()
    rng = np.random.default_rng(args.seed)
    amp = device.type == "cuda"
    log, step, t0 = [], 0, time.perf_counter()
    deadline = t0 + 60 * args.minutes
    while time.perf_counter() < deadline and (args.max_steps is None or step < args.max_steps):
        idx = rng.choice(len(data), args.batch, replace=len(data) < args.batch)
        batch = {k: v.to(device, non_blocking=True)
                 for k, v in model.make_batch([data[i] for i in idx], True, rng).items()}
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            out = model.loss(batch, step)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        model.on_step_end(step)
        step += 1
        if step % 200 == 0:
            log.append({"step": step, "seconds": time.perf_counter() - t0,
                        **{k: float(v) for k, v in out.items()}})
            print(json.dumps(log[-1]), flush=True)
    seconds = time.perf_counter() - t0

    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    info = {"category": cat, "config": asdict(cfg), "scale_factor": scale, "train_sketches": len(data),
            "dropped_longer_than_N": len(train_set) - len(kept), "reference_sketches": len(reference),
            "steps": step, "seconds": seconds, "steps_per_s": step / seconds,
            "batch": args.batch, "log": log}
    (run / "config.json").write_text(json.dumps(info, indent=2))
    return {k: v for k, v in info.items() if k != "log"} | {"last": log[-1] if log else None}


def grid_png(sketches: Sketches, path: Path, n: int = 64, size: int = 64) -> None:
    try:
        from PIL import Image

        from sketchlab.data.raster import rasterize
    except ImportError:
        return
    imgs = rasterize(sketches[np.arange(min(n, len(sketches)))], size=size, margin=3.0)
    cols = int(math.ceil(math.sqrt(len(imgs))))
    rows = int(math.ceil(len(imgs) / cols))
    canvas = np.full((rows * size, cols * size), 255, np.uint8)
    for i, img in enumerate(imgs):
        r, c = divmod(i, cols)
        canvas[r * size:(r + 1) * size, c * size:(c + 1) * size] = img
    Image.fromarray(canvas).save(path)


def evaluate(args) -> dict:
    from safetensors.torch import load_file

    device = torch.device(args.device)
    run = Path(args.run)
    info = json.loads((run / "config.json").read_text())
    cat = info["category"]
    model = SketchKnitter(Config(**info["config"]))
    model.load_state_dict(load_file(str(run / "model.safetensors")))
    model.to(device).eval()
    reference = Sketches.load(run / "reference.npz")
    n = args.n or len(reference)
    result = {"category": cat, "run": str(run), "n_samples": n, "reference": len(reference),
              "train_steps": info["steps"], "train_seconds": info["seconds"]}

    judge = None
    T = model.diffusion.num_timesteps
    S = 30 if T >= 60 else 10  # the stride rule cannot make 30 of a smoke run's 50 steps
    samplers = [(f"ddpm{T}", dict(sampler="ddpm")), (f"ddim{S}", dict(sampler="ddim", steps=S))]
    if args.classifier:
        from sketchlab.eval.classifier import load_classifier

        judge = load_classifier(args.classifier, device)
        if cat not in judge.categories:
            raise SystemExit(f"classifier {args.classifier} does not know {cat!r}")
        k = judge.categories.index(cat)

        def score_fn(sk: Sketches) -> np.ndarray:
            _, logits = judge.extract(sk)
            return torch.softmax(torch.from_numpy(logits), -1)[:, k].numpy()

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
        samplers.append((f"rshortcut{S}", dict(sampler="rshortcut", steps=S)))

    samples = {}
    for name, kw in samplers:
        model.generate(args.batch, batch_size=args.batch, device=device, **kw)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        sk = model.generate(n, batch_size=args.batch, device=device,
                            generator=torch.Generator(device).manual_seed(0), **kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
        sec = time.perf_counter() - t
        sk.category = np.zeros(len(sk), np.int64)
        sk.category_names = (cat,)
        samples[name] = sk
        result.setdefault("sampling", {})[name] = {"seconds": sec, "sketches_per_s": n / sec,
                                                   "mean_points": float(sk.lengths.mean())}
        if out_dir():
            sk.save(out_dir() / f"samples_{name}.npz")
            grid_png(sk, out_dir() / f"samples_{name}.png")
    if out_dir():
        grid_png(reference, out_dir() / "reference.png")

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
    ap.add_argument("phase", choices=("train", "evaluate"))
    ap.add_argument("--run", required=True, help="run folder (kept between the two phases)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ndjson", help="an SPG / QuickDraw ndjson file (splits.json beside it)")
    ap.add_argument("--data-dir", help="folder of imported sketch-rnn npz files")
    ap.add_argument("--category", default="apple")
    ap.add_argument("--carve", type=int, default=150, help="training sketches moved to the reference")
    ap.add_argument("--minutes", type=float, default=8.0, help="training time budget")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ema-rate", type=float, default=0.9999)
    ap.add_argument("--num-res-blocks", type=int, default=2)
    ap.add_argument("--faithful", action="store_true")
    ap.add_argument("--random-scale", type=float, default=0.0,
                    help="stretch augmentation (0: none, as the original; 0.1 helps tiny sets)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classifier", help="a `sketchlab classifier train` run knowing the category")
    ap.add_argument("--n", type=int, default=None, help="samples per sampler (default: reference size)")
    ap.add_argument("--calib-sketches", type=int, default=512)
    ap.add_argument("--record-steps", type=int, default=50)
    ap.add_argument("--recognizer-epochs", type=int, default=10)
    ap.add_argument("--target-on", default="x_t", choices=("x_t", "x0_hat"))
    ap.add_argument("--gs", action="store_true", help="also the Geometry Score (slow)")
    ap.add_argument("--smoke", action="store_true", help="CPU check: a small UNet, T = 50")
    args = ap.parse_args(argv)
    if args.phase == "train" and not (args.ndjson or args.data_dir):
        ap.error("train needs --ndjson or --data-dir")
    result = train(args) if args.phase == "train" else evaluate(args)
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if out_dir():
        out_dir().mkdir(parents=True, exist_ok=True)
        (out_dir() / f"knitter_quality_{args.phase}.json").write_text(text)


if __name__ == "__main__":
    main()
