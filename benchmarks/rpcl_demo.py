#!/usr/bin/env python
"""Do doodle styles land in different RPCL components? The CPU demo configuration, measured.

Trains RPCL-pix2seq and/or RPCL-pix2seqH with their `demo_config()` on the built-in doodles for
a fixed wall time, then encodes the test split (z = mu) and compares each latent labelling
(pix2seq: component; H: level_k and level_l) with the doodle styles ("fish/left", ...) and the
categories: a contingency table, purity and NMI. Also draws conditional samples and the latent
map. JSON to stdout and to $OUT/rpcl_demo.json (or --out DIR).

  python benchmarks/rpcl_demo.py --minutes 3                 # both models, 3 minutes each
  python benchmarks/rpcl_demo.py --models rpcl-pix2seq --minutes 2 --out /tmp/demo
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sketchlab.config import apply_hparams  # noqa: E402
from sketchlab.data.sources import load_splits  # noqa: E402
from sketchlab.data.synthetic import CATEGORIES, STYLES, make_doodles_with_styles  # noqa: E402
from sketchlab.latent.codes import encode_sketches, label_agreement  # noqa: E402
from sketchlab.models import get_model_class  # noqa: E402
from sketchlab.train.trainer import Trainer, prepare_data  # noqa: E402


def demo_config(name: str):
    import importlib

    return importlib.import_module(get_model_class(name).__module__).demo_config()


def table_text(agreement: dict, row_names: list[str]) -> str:
    cols = agreement["cols"]
    lines = ["".ljust(18) + "".join(f"{c:>4}" for c in cols)]
    for r, counts in zip(agreement["rows"], agreement["table"]):
        lines.append(row_names[r].ljust(18) + "".join(f"{n:>4}" for n in counts))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="rpcl-pix2seq,rpcl-pix2seqh")
    ap.add_argument("--minutes", type=float, default=3.0, help="training wall time per model")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--train-per-category", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hparams", default=None, help="overrides of the demo config, k=v,...")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out) if args.out else Path("runs") / "rpcl_demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    cats = list(CATEGORIES)
    raw = load_splits(None, cats, builtin_per_category=args.train_per_category, seed=args.seed)
    n_test = len(raw["test"]) // len(cats)
    test_check, styles = make_doodles_with_styles(n_test, cats, seed=args.seed, split="test")
    assert np.array_equal(test_check.points, raw["test"].points)  # the same doodles, in order
    style_key = np.array([sum(len(STYLES[c]) for c in cats[:k]) for k in raw["test"].category]) + styles
    style_names = [f"{c}/{s}" for c in cats for s in STYLES[c]]
    report = {"benchmark": "rpcl_demo", "threads": torch.get_num_threads(), "minutes": args.minutes,
              "hparams": args.hparams,
              "train_per_category": args.train_per_category, "models": {}}
    for name in [m for m in args.models.split(",") if m]:
        cls = get_model_class(name)
        data = prepare_data(cls, apply_hparams(demo_config(name), args.hparams), raw)
        torch.manual_seed(args.seed)
        model = cls(data.config)
        run = out_dir / name
        t0 = time.time()
        trainer = Trainer(model, data, run, max_steps=args.max_steps, max_seconds=60 * args.minutes,
                          progress=False, device=torch.device("cpu"), log=lambda m: print(m, file=sys.stderr))
        summary = trainer.train()
        train_s = time.time() - t0
        model.eval()
        test = data.splits["test"]
        codes = encode_sketches(model, test)
        labels = model.latent_labels(codes)
        res = {"steps": summary["step"], "train_s": round(train_s, 1),
               "ms_per_step": round(1000 * summary["elapsed"] / max(summary["step"], 1), 1),
               "valid": {k: round(v, 4) for k, v in trainer.evaluate("valid").items()},
               "agreement": {}}
        for key, lab in labels.items():
            by_style = label_agreement(style_key, lab)
            by_cat = label_agreement(test.category, lab)
            res["agreement"][key] = {
                "style": {k: by_style[k] for k in ("purity", "nmi", "n_labels_used")},
                "category": {k: by_cat[k] for k in ("purity", "nmi", "n_labels_used")},
                "style_table": {style_names[r]: dict(zip(by_style["cols"], row))
                                for r, row in zip(by_style["rows"], by_style["table"])},
            }
            print(f"\n{name} {key} vs style (purity {by_style['purity']:.3f}, NMI {by_style['nmi']:.3f}; "
                  f"vs category: purity {by_cat['purity']:.3f}, NMI {by_cat['nmi']:.3f})", file=sys.stderr)
            print(table_text(by_style, style_names), file=sys.stderr)
        # conditional samples and the latent map, for a look
        from sketchlab.latent.commands import latent_map
        from sketchlab.render import save_grid

        pick = np.concatenate([np.nonzero(test.category == c)[0][:8] for c in range(len(cats))])
        refs = test.select(pick)
        samples = model.generate(references=refs, seed=0)
        save_grid(list(refs) + list(samples), out_dir / f"{name}_samples.png", cols=len(pick),
                  titles=[f"{cats[c]}" for c in refs.category] + [f"k={k}" for k in samples.component])
        latent_map(model, test, out_dir / f"{name}_map.png", thumbnails=120)
        res["n_alive"] = int(model.n_alive())
        report["models"][name] = res
    text = json.dumps(report, indent=1)
    (out_dir / "rpcl_demo.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
