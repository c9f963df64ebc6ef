#!/usr/bin/env python
"""Train one RPCL model on five SPG categories for a few minutes, then sample, map and score it.

For the GPU machine (one command per model, each well under its 10-minute limit):

  python benchmarks/gpu_rpcl_train.py rpcl-pix2seq --minutes 7
  python benchmarks/gpu_rpcl_train.py rpcl-pix2seqh --minutes 7

1. Imports airplane, apple, butterfly, cactus, pig from ../shared/data/spg20 into --data-dir
   (`sketchlab data import`; skipped when the npz files are there).
2. `sketchlab train MODEL --max-minutes M` with the seeds' defaults (batch 200, HyperLSTM 2048,
   z 128, bf16 autocast + the fast decoder path on CUDA; early stopping may end it sooner).
3. Conditional samples on the whole test split (z = mu of each reference image, tau 0.24), and
   a few samples from each live prior component.
4. Scores: the validation terms of the best checkpoint, the live components, Ret@1/10/50 (each
   generated sketch re-encoded retrieves its generating code among all N, spec 8.1), sampling
   speed; Rec and more via `sketchlab evaluate` when the eval suite is installed and --rec.
5. Writes at most 5 small files to $OUT (or --out): MODEL_summary.json, MODEL_samples.png
   (references above their samples), MODEL_components.png, MODEL_map.png, MODEL_loss.png.
   The run directory stays in --runs (not copied back).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sketchlab.cli import CLI_MODULES, main as cli  # noqa: E402

CATEGORIES = "airplane,apple,butterfly,cactus,pig"


def retrieval(gallery: torch.Tensor, queries: torch.Tensor, ks=(1, 10, 50)) -> dict[str, float]:
    """Ret@k (spec 8.1): query i's own gallery code among its k nearest (MSE, ties to the lowest
    index). Uses the eval suite's implementation when present."""
    try:
        from sketchlab.eval.metrics import retrieval_metrics

        return retrieval_metrics(gallery.cpu().numpy(), queries.cpu().numpy(), ks)
    except ImportError:
        pass
    g, q = gallery.double(), queries.double()
    d = torch.cdist(q, g)
    own = d.diagonal().unsqueeze(1)
    idx = torch.arange(len(g), device=d.device)
    rank = (d < own).sum(1) + ((d == own) & (idx[None] < idx[:, None])).sum(1)
    return {f"ret@{k}": float((rank < k).float().mean()) for k in ks}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=["rpcl-pix2seq", "rpcl-pix2seqh"])
    ap.add_argument("--minutes", type=float, default=7.0, help="training wall time (at most)")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--spg", default=None, help="SPG ndjson folder (default: shared/data/spg20 "
                    "inside or beside the repository)")
    ap.add_argument("--data-dir", default="data/spg5")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--hparams", default=None, help="extra --hparams for `sketchlab train`")
    ap.add_argument("--rec", action="store_true", help="also train a Sketch-a-Net and run `sketchlab evaluate`")
    args = ap.parse_args(argv)
    for module in ("sketchlab.cli.latent",):
        if module not in CLI_MODULES:   # until the lead lists it
            CLI_MODULES.append(module)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data_dir)
    name = args.model
    summary: dict = {"model": name, "categories": CATEGORIES.split(","), "minutes": args.minutes,
                     "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                     "torch": torch.__version__}
    t_all = time.time()
    if not all((data / f"{c}.npz").is_file() for c in CATEGORIES.split(",")):
        spg = args.spg or next((str(p) for p in (ROOT / "shared" / "data" / "spg20",
                                                 ROOT.parent / "shared" / "data" / "spg20") if p.is_dir()), None)
        if spg is None:
            sys.exit("no SPG data: pass --spg DIR (the spg20 ndjson folder) or --data-dir with the npz files")
        assert cli(["data", "import", spg, "--out", str(data), "--categories", CATEGORIES,
                    "--quiet"]) == 0

    # ---- train ----------------------------------------------------------------------------------
    run = Path(args.runs) / name
    train_args = ["train", name, "--data-dir", str(data), "--categories", CATEGORIES, "--out", str(run),
                  "--max-minutes", str(args.minutes), "--no-progress"]
    if args.max_steps:
        train_args += ["--max-steps", str(args.max_steps)]
    if args.hparams:
        train_args += ["--hparams", args.hparams]
    t0 = time.time()
    assert cli(train_args) == 0
    summary["train_s"] = round(time.time() - t0, 1)
    if (run / "loss.png").is_file():
        shutil.copy(run / "loss.png", out / f"{name}_loss.png")

    from sketchlab.errors import ConfigError
        from sketchlab.latent.maps import latent_map
    from sketchlab.render import save_grid
    from sketchlab.train import checkpoint as ckpt
    from sketchlab import runs
    from sketchlab.nn.device import pick_device

    rows = list(csv.DictReader(open(run / "log.csv")))
    valid_rows = [r for r in rows if r.get("valid_recon")]
    train_rows = [r for r in rows if r.get("loss")]
    state = torch.load(run / "state.pt", map_location="cpu", weights_only=True)
    summary.update(steps=int(state["step"]), epochs=int(state["epoch"]),
                   best_valid_recon=float(state["best_valid"]),
                   ms_per_step=round(1000 * float(state["elapsed"]) / max(int(state["step"]), 1), 1),
                   valid_history=[{k: float(v) for k, v in r.items() if v and (k.startswith("valid_") or k == "step")}
                                  for r in valid_rows][-8:],
                   last_train_terms={k: float(v) for k, v in train_rows[-1].items() if v} if train_rows else {})
    device = pick_device(None)
    opened = runs.open_run(run, device=device, which="best")
    model, info = opened.model, opened.info
    summary["max_seq_len"] = model.config.max_seq_len
    summary["n_alive"] = int(model.n_alive())
    summary["prior_weights"] = [round(float(w), 5) for w in model.prior_weights()]
    if hasattr(model, "n_alive_units"):
        summary["n_alive_units"] = int(model.n_alive_units())

    # ---- validation terms of the best checkpoint (eval mode, z = mu) -----------------------------
    valid = runs.load_references("valid", opened)
    rng = np.random.default_rng(0)
    sums, count = {}, 0
    with torch.no_grad():
        for lo in range(0, len(valid), 200):
            batch = {k: v.to(device) for k, v in model.make_batch(list(valid[np.arange(lo, min(lo + 200, len(valid)))]), False, rng).items()}
            for k, v in model.loss(batch, int(state["step"])).items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(batch["strokes"])
            count += len(batch["strokes"])
    summary["valid_best_checkpoint"] = {k: round(v / count, 4) for k, v in sums.items()}

    # ---- conditional samples on the test split ------------------------------------------------
    test = runs.load_references("test", opened)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model.generate(references=test[np.arange(8)], seed=1)        # warm-up (graph capture)
    sync()
    t0 = time.time()
    samples = model.generate(references=test, seed=0)
    sync()
    dt = time.time() - t0
    summary["sampling"] = {"n": len(samples), "s": round(dt, 2), "sketches_per_s": round(len(samples) / dt, 1),
                           "empty": int((samples.lengths == 0).sum()),
                           "mean_length": round(float(samples.lengths.mean()), 1)}
    samples.save(run / "test_samples.npz")
    queries = model.encode_sketches(samples)
    summary["ret"] = retrieval(torch.from_numpy(samples.z).to(queries.device), queries)
    pick = np.concatenate([np.nonzero(test.category == c)[0][:6] for c in np.unique(test.category)])
    refs, gen = test.select(pick), samples.select(pick)
    save_grid(list(refs) + list(gen), out / f"{name}_samples.png", cols=len(pick), cell=72,
              titles=[test.category_names[c] for c in refs.category] + [f"k={k}" for k in gen.component])
    comp_counts = np.bincount(samples.component, minlength=len(model.prior_weights()))
    summary["test_component_usage"] = comp_counts.tolist()

    # ---- a few samples from each live component ----------------------------------------------
    alive = [k for k, w in enumerate(model.prior_weights().tolist()) if w > model.config.alive_threshold]
    items, titles = [], []
    for k in alive[:16]:
        comp = model.generate(6, component=k, seed=k)
        items += list(comp)
        titles += [f"k={k}"] * len(comp)
    if items:
        save_grid(items, out / f"{name}_components.png", cols=6, cell=72, titles=titles)

    # ---- latent map ----------------------------------------------------------------------------
    t0 = time.time()
    try:
        latent_map(model, test, out / f"{name}_map.png", thumbnails=150)
    except ConfigError as e:          # no scikit-learn on this machine: a PCA map instead
        summary["map_note"] = str(e)
        latent_map(model, test, out / f"{name}_map.png", thumbnails=150, method="pca")
    summary["map_s"] = round(time.time() - t0, 1)

    # ---- Rec and the rest through the eval suite (optional) ---------------------------------
    if args.rec:
        try:
            clf = Path(args.runs) / "sketchanet_spg5"
            if not (clf / "config.json").is_file():
                assert cli(["classifier", "train", "--data-dir", str(data), "--categories", CATEGORIES,
                            "--out", str(clf), "--epochs", "10", "--quiet"]) == 0
            samples.in_units(1.0).save(run / "test_samples_raw.npz")   # evaluate reads raw units
            assert cli(["evaluate", str(run / "test_samples_raw.npz"), "--run", str(run), "--classifier", str(clf),
                        "--data-dir", str(data), "--out", str(run / "metrics.json"), "--no-gs", "--quiet"]) == 0
            summary["evaluate"] = json.loads((run / "metrics.json").read_text())
        except Exception as e:  # the eval suite may not be installed yet
            summary["evaluate_error"] = f"{type(e).__name__}: {e}"[:300]
    summary["total_s"] = round(time.time() - t_all, 1)
    text = json.dumps(summary, indent=1)
    (out / f"{name}_summary.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
