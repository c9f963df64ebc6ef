"""Overfit check: can a model redraw its own few training doodles after a few CPU minutes?

A pipeline bug (wrong targets, a shifted decoder input, an encoder that loses the sketch, a
sampler that drifts) shows here as redrawings that do not match their inputs even though the
training loss falls. The model trains on `--per-category` built-in doodles of each of the five
categories (train = valid = test), then redraws every one from its own code at a low
temperature. Prints JSON and writes the pairs (original, redrawing) to --out.

    python benchmarks/overfit.py --model sketchgloc --minutes 5 --out gloc_overfit.png
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sketchlab.data.sources import load_splits  # noqa: E402
from sketchlab.data.sketches import Sketches  # noqa: E402
from sketchlab.data.sketches import Sketches
from sketchlab.models import get_model_class  # noqa: E402
from sketchlab.render import save_grid  # noqa: E402
from sketchlab.train.trainer import Trainer, prepare_data  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a model with a demo_config(): sketch-rnn excluded")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--out", default="overfit.png")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cls = get_model_class(args.model)
    cfg = importlib.import_module(cls.__module__).demo_config(batch_size=args.batch_size, eval_every=100)
    raw = load_splits(None, None, builtin_per_category=args.per_category, seed=0)["train"]
    data = prepare_data(cls, cfg, {"train": raw, "valid": raw, "test": raw})
    with tempfile.TemporaryDirectory() as run:
        trainer = Trainer(cls(data.config), data, run, device=torch.device("cpu"),
                          max_seconds=60 * args.minutes, progress=False, log=lambda m: None)
        summary = trainer.train()
    model = trainer.model.eval()
    refs = data.splits["train"]
    redrawn = model.generate(references=refs, temperature=args.temperature, seed=0)
    rows = [s for i in range(len(refs)) for s in (refs[i], redrawn[i])]
    save_grid(Sketches.from_list(rows, scale_factor=model.scale_factor).in_units(1.0), args.out, cols=4)
    result = {"benchmark": "overfit", "model": args.model, "sketches": len(refs),
              "steps": summary["step"], "best_valid": summary["best_valid"],
              "valid_metric": data.config.valid_metric, "figure": args.out}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
