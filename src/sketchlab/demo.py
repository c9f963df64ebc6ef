"""`sketchlab demo`: a small model trained on the built-in doodles on a CPU in a few minutes.

It needs no data and no GPU. It writes, under `--out`:
  run/                  the run directory (config.json, weights, log.csv): `sketchlab sample demo_out/run ...`
  reconstructions.png   held-out doodles (odd rows) and the model's redrawings of them (even rows)
  samples.png           new doodles from random codes
  interpolation.png     a walk through the latent space from one doodle to another
  loss.png              training and validation loss
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from sketchlab.config import apply_hparams
from sketchlab.data.sources import load_splits
from sketchlab.data.strokes import Sketches
from sketchlab.latent.interpolate import interpolate
from sketchlab.models import get_model_class
from sketchlab.train.trainer import Trainer, pick_device, prepare_data

# Small enough to learn the doodles on 2 CPU cores in about two minutes.
DEMO_HPARAMS = {
    # No recurrent dropout: the LSTMs then run on torch's native sequence kernel, ~3x faster on a
    # CPU. A lighter KL weight lets 2 minutes of training use the code (reconstructions follow
    # their input) instead of settling into a decoder that ignores it.
    "sketch-rnn": ("enc_rnn_size=96,dec_rnn_size=192,z_size=24,max_seq_len=64,batch_size=32,"
                   "learning_rate=0.002,use_recurrent_dropout=0,eval_every=100,patience=0,"
                   "kl_weight=0.1,kl_weight_start=0.01,kl_decay_rate=0.999"),
}


def register_cli(sub) -> None:
    p = sub.add_parser("demo", help="train a small model on built-in doodles and draw what it learned",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  sketchlab demo --out demo_out --minutes 2")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--model", default="sketch-rnn", choices=sorted(DEMO_HPARAMS))
    p.add_argument("--minutes", type=float, default=2.0, help="training time budget (default 2)")
    p.add_argument("--per-category", type=int, default=600, help="training doodles per category")
    p.add_argument("--device", default=None, help="default: cpu (the demo is sized for it)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    cls = get_model_class(args.model)
    cfg = apply_hparams(cls.Config(), DEMO_HPARAMS[args.model] + f",seed={args.seed}")
    print(f"sketchlab demo: {args.model} on the built-in doodles for {args.minutes:g} min -> {out}/")
    raw = load_splits(None, None, builtin_per_category=args.per_category, seed=args.seed)
    data = prepare_data(cls, cfg, raw)
    print(f"data: {len(data.splits['train'])} training doodles of {', '.join(data.categories)}")
    model = cls(data.config)
    device = pick_device(args.device or "cpu")
    if device.type == "cpu":
        # Small matrices: one thread is as fast, and immune to OpenMP spinning on a busy machine.
        torch.set_num_threads(1)
    trainer = Trainer(model, data, out / "run", device=device, max_seconds=60 * args.minutes,
                      run_info={"data_dir": None})
    t0 = time.time()
    summary = trainer.train()
    print(f"trained {summary['step']} steps in {time.time() - t0:.0f}s; best valid loss "
          f"{summary['best_valid']:.3f}")
    from sketchlab.train.checkpoint import load_model

    model = load_model(out / "run", device=device)
    draw_demo_figures(model, data.splits["test"], out, seed=args.seed)
    return 0


def _pick_per_category(sk: Sketches, per_cat: int) -> np.ndarray:
    idx = []
    for c in range(len(sk.category_names)):
        idx += list(np.nonzero(sk.category == c)[0][:per_cat])
    return np.array(idx, dtype=np.int64)


def draw_demo_figures(model, test: Sketches, out: Path, seed: int = 0, temperature: float = 0.2) -> None:
    from sketchlab.render import save_grid
    from sketchlab.render.png import plot_curves, render_strip, save_png
    from sketchlab.train.commands import to_raw_units

    # Reconstructions: 6 test doodles per category, each above the model's redrawing.
    refs = test.select(_pick_per_category(test, 6))
    recon = model.generate(references=refs, temperature=temperature, seed=seed)
    rows, titles = [], []
    for r in range(0, len(refs), 6):
        part = np.arange(r, min(r + 6, len(refs)))
        rows += [refs[int(i)] for i in part] + [recon[int(i)] for i in part]
        titles += [f"{refs.category_name(int(i))}" for i in part] + ["redrawn"] * len(part)
    grid = to_raw_units(Sketches.from_list(rows, scale_factor=model.scale_factor))
    save_grid(grid, out / "reconstructions.png", cols=6, titles=titles)

    samples = to_raw_units(model.generate(n=36, temperature=0.3, seed=seed))
    save_grid(samples, out / "samples.png", cols=6)

    # Interpolation between the first two categories' first test doodles.
    pair = refs.select([0, 6 if len(refs) > 6 else len(refs) - 1])
    batch = model.make_batch(list(pair), False, np.random.default_rng(0))
    with torch.no_grad():
        z = model.encode({k: v.to(model.device) for k, v in batch.items()})
    path = interpolate(z[0].cpu(), z[1].cpu(), 8)
    walk = to_raw_units(model.decode_codes(path, temperature=0.1, seed=seed))
    captions = [pair.category_name(0)] + [""] * 6 + [pair.category_name(1)]
    save_png(render_strip(walk, captions=captions), out / "interpolation.png")

    plot_curves(out / "run" / "log.csv", out / "loss.png", series=["loss", "valid_loss"],
                title="sketch-rnn on doodles")
    for name in ("reconstructions.png", "samples.png", "interpolation.png", "loss.png"):
        print(f"wrote {out / name}")
