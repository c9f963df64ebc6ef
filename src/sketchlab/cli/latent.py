"""`sketchlab latent map | interpolate | analogy`: the command line of `sketchlab.latent.maps`."""

from __future__ import annotations

import argparse

import numpy as np

from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError
from sketchlab.latent.maps import analogy_strip, interpolation_strip, latent_map
from sketchlab.nn.device import pick_device
from sketchlab import runs


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def _load(args):
    run = runs.open_run(args.run, device=pick_device(args.device), which=args.which)
    return run.model, runs.load_references(args.split, run, flag="--split", log=print,
                                           data_dir=args.data_dir)


def _subset(refs: Sketches, n: int | None, seed: int) -> Sketches:
    """At most n sketches, the same share of each category, in their original order."""
    if n is None or n >= len(refs):
        return refs
    if n < 1:
        raise ConfigError(f"--n {n}: need at least one sketch")
    rng = np.random.default_rng(seed)
    if refs.category is None:
        return refs.select(np.sort(rng.choice(len(refs), n, replace=False)))
    cats = np.unique(refs.category)
    per = max(1, n // len(cats))
    keep = []
    for c in cats:
        idx = np.nonzero(refs.category == c)[0]
        keep.append(rng.choice(idx, min(per, len(idx)), replace=False))
    return refs.select(np.sort(np.concatenate(keep))[:n])


def cmd_map(args) -> int:
    model, refs = _load(args)
    refs = _subset(refs, args.n, args.seed)
    summary = latent_map(model, refs, args.out, perplexity=args.perplexity,
                         thumbnails=args.thumbnails, seed=args.seed, method=args.method)
    drawn = ", ".join(f"{k} ({v})" for k, v in summary["labels"].items())
    print(f"{'t-SNE' if args.method == 'tsne' else 'PCA'} of {summary['n']} codes"
          + (f" and {summary['centres']} prior means" if summary["centres"] else "")
          + f", coloured by {drawn} -> {args.out}")
    if "n_alive" in summary:
        print(f"live prior components: {summary['n_alive']}")
    for key, agree in summary.get("agreement", {}).items():
        print(f"{key} vs category: NMI {agree['nmi']:.3f}, purity {agree['purity']:.3f}")
    return 0


def cmd_interpolate(args) -> int:
    model, refs = _load(args)
    interpolation_strip(model, refs, args.a, args.b, args.out, steps=args.steps,
                        spherical=not args.linear, temperature=args.temperature, seed=args.seed,
                        greedy=args.greedy)
    print(f"interpolation {args.a} -> {args.b} in {args.steps} steps -> {args.out}")
    return 0


def cmd_analogy(args) -> int:
    model, refs = _load(args)
    analogy_strip(model, refs, args.a, args.b, args.c, args.out, samples=args.samples,
                  temperature=args.temperature, seed=args.seed, greedy=args.greedy)
    print(f"analogy z_{args.c} + (z_{args.b} - z_{args.a}) -> {args.out}")
    return 0


MAP_EPILOG = """examples:
  sketchlab latent map runs/rpcl --out map.png                  # test split, up to 1000 codes
  sketchlab latent map runs/rpclh --out map.png --split valid --n 500
"""
INTERP_EPILOG = """examples:
  sketchlab latent interpolate runs/rpcl --out strip.png --a 0 --b 250 --steps 8
  sketchlab latent interpolate runs/sheep --out strip.svg --a 3 --b 7 --linear
"""
ANALOGY_EPILOG = """examples:
  sketchlab latent analogy runs/rpclh --a 10 --b 12 --c 300 --out analogy.png
  (decodes z_c + (z_b - z_a): "c, changed the way b differs from a")
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory made by `sketchlab train`")
    p.add_argument("--out", required=True, help="output drawing (.png; strips also .svg)")
    p.add_argument("--split", default="test",
                   help="the sketches to use: test | valid | train of the run's data, or a .npz file")
    p.add_argument("--data-dir", default=None,
                   help="where the run's data lives now (a pretrained model records none)")
    p.add_argument("--which", choices=["best", "latest"], default="best", help="which checkpoint")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the subset, the projection and the decoding (default 0)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")


def register_cli(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    lat = subparsers.add_parser("latent", help="latent-space maps, interpolations and analogies",
                                description="Look at a trained model's latent space.")
    sub = lat.add_subparsers(dest="latent_command", metavar="TOOL")
    lat.set_defaults(func=lambda args: (lat.print_help(), 1)[1])

    m = sub.add_parser("map", help="t-SNE map of the codes, coloured by category and latent labels",
                       description="Encode sketches of --split and draw a 2-D map (t-SNE or PCA) "
                                   "of their codes, coloured by category and by the model's "
                                   "latent labels (RPCL: prior component), with thumbnails and "
                                   "the prior's means.",
                       epilog=MAP_EPILOG, formatter_class=fmt)
    _common(m)
    m.add_argument("--n", type=int, default=1000, help="at most this many sketches (balanced over categories)")
    m.add_argument("--perplexity", type=float, default=30.0,
                   help="t-SNE perplexity (default 30; lowered for few sketches)")
    m.add_argument("--method", choices=["tsne", "pca"], default="tsne",
                   help="tsne (scikit-learn) or pca (no extra package)")
    m.add_argument("--thumbnails", type=int, default=150, help="sketches drawn at their positions")
    m.set_defaults(func=cmd_map)

    i = sub.add_parser("interpolate", help="decode the path between two sketches' codes",
                       description="Encode sketches --a and --b of --split and draw the sketches "
                                   "decoded along the path between their codes (slerp, or a "
                                   "straight line with --linear).",
                       epilog=INTERP_EPILOG, formatter_class=fmt)
    _common(i)
    i.add_argument("--a", type=int, default=0, help="index of the first sketch in --split")
    i.add_argument("--b", type=int, default=1, help="index of the last sketch in --split")
    i.add_argument("--steps", type=int, default=8, help="decoded codes, ends included")
    i.add_argument("--linear", action="store_true", help="straight line instead of slerp")
    i.add_argument("--temperature", type=float, default=None, help="sampling temperature (model default)")
    i.add_argument("--greedy", action="store_true", help="most likely choices instead of sampling")
    i.set_defaults(func=cmd_interpolate)

    a = sub.add_parser("analogy", help="decode z_c + (z_b - z_a), the latent calculator",
                       description="Decode z_c + (z_b - z_a): sketch c changed the way b differs "
                                   "from a (the sketch-rnn paper's latent arithmetic).",
                       epilog=ANALOGY_EPILOG, formatter_class=fmt)
    _common(a)
    a.add_argument("--a", type=int, required=True, help="index of sketch a in --split")
    a.add_argument("--b", type=int, required=True, help="index of sketch b in --split")
    a.add_argument("--c", type=int, required=True, help="index of sketch c in --split")
    a.add_argument("--samples", type=int, default=3, help="how many decodings of the result")
    a.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (model default)")
    a.add_argument("--greedy", action="store_true",
                   help="most likely choices instead of sampling")
    a.set_defaults(func=cmd_analogy)


__all__ = ["register_cli"]
