"""`sketchlab zoo list | info | train | add`: the pretrained models shipped in the package."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sketchlab import runs, zoo
from sketchlab.cli import main
from sketchlab.errors import ConfigError

EPILOG = """examples:
  sketchlab zoo list
  sketchlab zoo info rpcl-pix2seq-spg5
  sketchlab sample sketch-rnn-spg5 --out s.npz --n 16          # a name works wherever a run does
  sketchlab data import ../shared/data/spg20 --out data/spg20
  sketchlab zoo train sketch-rnn-spg5 --data-dir data/spg20 --out runs/srnn5   # reproduce it
"""


def headline(card: dict) -> str:
    """The one metric that says how good an entry is, for the table."""
    m = card.get("metrics", {})
    for key, label in (("rec@1", "Rec@1 (redrawn)"), ("test_accuracy", "test accuracy"),
                       ("ddim30_rec@1", "Rec@1 (DDIM-30 samples)"),
                       ("heal30_rec@1", "Rec@1 (healed at 0.3)"), ("valid_loss", "valid loss")):
        if key in m and m[key] is not None:
            return f"{label} {m[key]:.3f}"
    return "-"


def cmd_list(args) -> int:
    rows = []
    for name in zoo.names():
        card = zoo.read_card(name)
        size = card["weights"].get("bytes", 0) / 1e6
        rows.append((name, card.get("model", "?"), card.get("data", {}).get("name", "?"),
                     f"{size:.1f} MB", headline(card)))
    if not rows:
        print("no pretrained models are installed")
        return 0
    head = ("name", "model", "data", "size", "headline metric")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_info(args) -> int:
    zoo.verify(args.name)
    print(json.dumps(zoo.read_card(args.name), indent=2))
    return 0


def recipe_argv(card: dict, out: str, data_dir: str | None, device: str | None) -> list[str]:
    """The `sketchlab train` command line an entry's recipe stands for."""
    r = card["recipe"]
    data_dir = data_dir or r.get("data_dir")
    if data_dir is None:
        raise ConfigError(f"zoo train {card['name']}: give --data-dir, the folder that "
                          f"`{r.get('data_import', 'sketchlab data import ...')}` writes")
    argv = ["train", r["model"], "--data-dir", str(data_dir), "--out", str(out),
            "--max-steps", str(int(r["max_steps"]))]
    if r.get("categories"):
        argv += ["--categories", ",".join(r["categories"])]
    if r.get("hparams"):
        argv += ["--hparams", r["hparams"]]
    argv += ["--device", device or r.get("device", "cpu")]
    return argv


def cmd_train(args) -> int:
    card = zoo.read_card(args.name)
    argv = recipe_argv(card, args.out, args.data_dir, args.device)
    if args.max_steps is not None:   # a shorter rehearsal of the recipe
        argv[argv.index("--max-steps") + 1] = str(args.max_steps)
    print("sketchlab " + " ".join(a if " " not in a and "," not in a or a.startswith("--")
                                  else repr(a) for a in argv))
    return main(argv + (["--no-progress"] if args.quiet else []))


def cmd_add(args) -> int:
    extra = json.loads(Path(args.card).read_text()) if args.card else {}
    out = runs.export_to_zoo(args.run, args.name, extra, dtype=args.dtype,
                             zoo_dir=args.zoo_dir or zoo.ZOO_DIR)
    card = json.loads((out / zoo.CARD).read_text())
    print(f"{args.run} -> {out} ({card['weights']['bytes'] / 1e6:.2f} MB, {args.dtype})")
    return 0


def register_cli(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    z = subparsers.add_parser("zoo", help="pretrained models shipped with sketchlab",
                              description="List, inspect and reproduce the pretrained models. A "
                              "zoo name works wherever a run directory does; a local path of the "
                              "same name wins, `zoo:NAME` forces the zoo.",
                              epilog=EPILOG, formatter_class=fmt)
    sub = z.add_subparsers(dest="zoo_command", metavar="ACTION")
    z.set_defaults(func=lambda args: (z.print_help(), 1)[1])

    p = sub.add_parser("list", help="a table of the pretrained models",
                       description="A table of the pretrained models: name, model, categories, "
                                   "size and what each was trained on.")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("info", help="print a model's card (data, recipe, metrics, hash)",
                       description="Print a pretrained model's card: its data, training recipe, "
                                   "metrics and the hash its weights are checked against.")
    p.add_argument("name", help="a name from `sketchlab zoo list`")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("train", help="reproduce a pretrained model from its recipe",
                       description="Train a pretrained model again from its card's recipe (the "
                                   "same data, hyperparameters and steps) into --out.")
    p.add_argument("name", help="a name from `sketchlab zoo list`")
    p.add_argument("--out", required=True, help="run directory to train into")
    p.add_argument("--data-dir", default=None, help="the imported data the recipe names")
    p.add_argument("--device", default=None, help="cpu (the recipes' device), cuda, mps")
    p.add_argument("--max-steps", type=int, default=None, help="stop early (a rehearsal)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("add", help="(developers) package a trained run as a zoo entry",
                       description="(For developers) package a trained run as a zoo entry: its "
                                   "weights in --dtype, its config and a card.")
    p.add_argument("run", help="the run directory to package")
    p.add_argument("name", help="the entry's name (what `sketchlab.load(NAME)` will take)")
    p.add_argument("--card", default=None, help="JSON with the card's fields (recipe, metrics, ...)")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32", "bfloat16"],
                   help="precision of the packaged weights (default float16)")
    p.add_argument("--zoo-dir", default=None, help="write the entry here instead of the package")
    p.set_defaults(func=cmd_add)
