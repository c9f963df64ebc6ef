"""`sketchlab demo --train`: a small model trained on the built-in doodles on a CPU in minutes.

It needs no data and no GPU. It writes, under `--out`:
  run/                  the run directory (config.json, weights, log.csv): `sketchlab sample demo_out/run ...`
  reconstructions.png   held-out doodles (blue), each above the model's redrawing of it
  samples.png           new doodles from random codes (RPCL: from the learned prior)
  healing.png           (SP-gra2seq, SketchGloc: no prior) held-out doodles, the corrupted inputs
                        (30% of the patches masked / strokes moved) and their redrawings
  interpolation.png     a walk through the latent space from one doodle to another
  loss.png              training and validation loss
and for the RPCL models, whose prior is a mixture learned by rival-penalised EM:
  latent_map.png        t-SNE of the test doodles' codes by category and by prior component
  components.png        one row of samples per live component
  styles.json           does each doodle style (fish facing left / right, ...) get its own component?
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from sketchlab.config import apply_hparams
from sketchlab.data.sources import load_splits
from sketchlab.data.sketches import Sketches
from sketchlab.latent.interpolate import interpolate
from sketchlab.models import get_model_class
from sketchlab.nn.device import pick_device
from sketchlab.train.trainer import Trainer, prepare_data

# Small enough to learn the doodles on 2 CPU cores in about two minutes. No recurrent dropout:
# the LSTMs then run on torch's native sequence kernel, ~3x faster on a CPU. A lighter KL weight
# lets two minutes of training use the code (reconstructions follow their input) instead of
# settling into a decoder that ignores it.
SKETCH_RNN_DEMO = ("enc_rnn_size=96,dec_rnn_size=192,z_size=24,max_seq_len=64,batch_size=32,"
                   "learning_rate=0.002,use_recurrent_dropout=0,eval_every=100,patience=0,"
                   "kl_weight=0.1,kl_weight_start=0.01,kl_decay_rate=0.999")
DEMO_MODELS = ("sketch-rnn", "rpcl-pix2seq", "rpcl-pix2seqh", "sp-gra2seq", "sketchgloc")


def demo_config(name: str):
    """The demo's configuration of a model (the other modules define theirs as `demo_config()`)."""
    cls = get_model_class(name)
    if name == "sketch-rnn":
        return apply_hparams(cls.Config(), SKETCH_RNN_DEMO)
    return importlib.import_module(cls.__module__).demo_config()


def run_training_demo(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    cls = get_model_class(args.model)
    cfg = apply_hparams(demo_config(args.model), args.hparams)
    print(f"sketchlab demo: {args.model} on the built-in doodles for {args.minutes:g} min -> {out}/")
    raw = load_splits(None, None, builtin_per_category=args.per_category, seed=args.seed)
    data = prepare_data(cls, cfg, raw)
    print(f"data: {len(data.splits['train'])} training doodles of {', '.join(data.categories)}")
    device = pick_device(args.device or "cpu")
    if device.type == "cpu":
        # Small matrices: one thread is as fast, and immune to OpenMP spinning on a busy machine.
        torch.set_num_threads(1)
    trainer = Trainer(cls(data.config), data, out / "run", device=device,
                      max_seconds=60 * args.minutes, run_info={"data_dir": None})
    t0 = time.time()
    summary = trainer.train()
    print(f"trained {summary['step']} steps in {time.time() - t0:.0f}s; best valid "
          f"{data.config.valid_metric} {summary['best_valid']:.3f}")
    from sketchlab.runs import load_model

    model = load_model(out / "run", device=device)
    draw_demo_figures(model, data.splits["test"], out, seed=args.seed)
    if model.has_components:
        draw_latent_figures(model, data.splits["test"], out, seed=args.seed,
                            per_category=len(raw["test"]) // len(data.categories))
    return 0


def _pick_per_category(sk: Sketches, per_cat: int) -> np.ndarray:
    idx = []
    for c in range(len(sk.category_names)):
        idx += list(np.nonzero(sk.category == c)[0][:per_cat])
    return np.array(idx, dtype=np.int64)


def draw_demo_figures(model, test: Sketches, out: Path, seed: int = 0, temperature: float = 0.2) -> None:
    from sketchlab.render import save_conditioned_grid, save_grid
    from sketchlab.render.png import plot_curves, render_strip, save_png

    # Reconstructions: 6 test doodles per category, each above the model's redrawing.
    refs = test.select(_pick_per_category(test, 6))
    titles = [refs.category_name(i) for i in range(len(refs))]

    def pairs(redrawn: Sketches, caption: str, path: Path, corrupted: Sketches | None = None):
        how = "" if corrupted is None else "corrupted at strength 0.3, "
        save_conditioned_grid(redrawn.in_units(1.0), path, refs.in_units(1.0),
                              corrupted=None if corrupted is None else corrupted.in_units(1.0),
                              input_titles=titles, output_titles=[caption] * len(refs), cols=6,
                              caption=f"{model.name} demo: {caption} test doodles ({how}"
                                      f"temperature {temperature:g}, seed {seed})")

    pairs(model.generate(references=refs, temperature=temperature, seed=seed), "redrawn",
          out / "reconstructions.png")
    if model.can_sample:
        samples = model.generate(n=36, temperature=0.3, seed=seed).in_units(1.0)
        save_grid(samples, out / "samples.png", cols=6,
                  caption=f"{model.name} demo: free samples (temperature 0.3, seed {seed})")
        figures = ["samples.png"]
    else:  # no prior: show healing instead (the references corrupted at strength 0.3)
        pairs(model.heal(refs, strength=0.3, temperature=temperature, seed=seed),
              "healed", out / "healing.png", corrupted=model.corrupt(refs, strength=0.3, seed=seed))
        figures = ["healing.png"]

    # Interpolation between the first two categories' first test doodles.
    pair = refs.select([0, 6 if len(refs) > 6 else len(refs) - 1])
    batch = model.make_batch(list(pair), False, np.random.default_rng(0))
    with torch.no_grad():
        z = model.encode({k: v.to(model.device) for k, v in batch.items()})
    path = interpolate(z[0].cpu(), z[1].cpu(), 8)
    walk = model.decode_codes(path, temperature=0.1, seed=seed).in_units(1.0)
    captions = [pair.category_name(0)] + [""] * 6 + [pair.category_name(1)]
    save_png(render_strip(walk, captions=captions), out / "interpolation.png")

    plot_curves(out / "run" / "log.csv", out / "loss.png", series=["loss", "valid_loss"],
                title=f"{model.name} on doodles")
    for name in ["reconstructions.png", *figures, "interpolation.png", "loss.png"]:
        print(f"wrote {out / name}")


def draw_latent_figures(model, test: Sketches, out: Path, seed: int, per_category: int) -> dict:
    """The RPCL demo's extra question: do the doodle styles get components of their own?"""
    from sketchlab.data.synthetic import STYLES, make_doodles_with_styles
    from sketchlab.latent.codes import label_agreement
    from sketchlab.latent.maps import latent_map
    from sketchlab.render import save_grid

    cats = list(test.category_names)
    # The built-in test split, regenerated with its style labels (same seed, same doodles).
    styled, style = make_doodles_with_styles(per_category, cats, seed=seed, split="test")
    limit = int(getattr(model.config, "max_seq_len", 0) or 0)
    keep = (styled.lengths > 0) & ((styled.lengths <= limit) if limit > 0 else True)
    styled, style = styled.select(np.nonzero(keep)[0]), style[keep]   # the trainer's filter
    if len(styled) != len(test) or not np.array_equal(styled.lengths, test.lengths):
        raise RuntimeError("the built-in test doodles and their styles disagree")
    names = [f"{c}/{s}" for c in cats for s in STYLES[c]]
    first = np.cumsum([0] + [len(STYLES[c]) for c in cats])
    style_id = first[test.category] + style

    latent_map(model, test, out / "latent_map.png", thumbnails=120, seed=seed)
    labels = model.latent_labels(model.encode_sketches(test))
    report = {"n_alive": int(model.n_alive()), "labels": {}}
    for key, lab in labels.items():
        by_style = label_agreement(style_id, lab)
        by_cat = label_agreement(test.category, lab)
        report["labels"][key] = {
            "style_purity": by_style["purity"], "style_nmi": by_style["nmi"],
            "category_purity": by_cat["purity"], "category_nmi": by_cat["nmi"],
            "components_used": by_style["n_labels_used"],
            "style_by_component": {names[r]: dict(zip(map(str, by_style["cols"]), row))
                                   for r, row in zip(by_style["rows"], by_style["table"])}}
        print(f"{key}: {by_style['n_labels_used']} components used by the test doodles; "
              f"vs style purity {by_style['purity']:.2f} NMI {by_style['nmi']:.2f}; "
              f"vs category purity {by_cat['purity']:.2f} NMI {by_cat['nmi']:.2f}")
        for r, row in zip(by_style["rows"], by_style["table"]):
            cells = ", ".join(f"k{k}:{n}" for k, n in zip(by_style["cols"], row) if n)
            print(f"  {names[r]:<18} {cells}")
    (out / "styles.json").write_text(json.dumps(report, indent=1) + "\n")

    # One row of samples per live component (H: per level-k Gaussian).
    alive = np.nonzero(model.prior_weights().detach().cpu().numpy() > model.config.alive_threshold)[0]
    rows, titles = [], []
    for k in alive[:10]:
        part = model.generate(n=6, component=int(k), temperature=0.3, seed=seed).in_units(1.0)
        rows += list(part)
        titles += [f"k={int(k)}"] * len(part)
    save_grid(Sketches.from_list(rows), out / "components.png", cols=6, titles=titles)
    for name in ("latent_map.png", "components.png", "styles.json"):
        print(f"wrote {out / name}")
    return report
