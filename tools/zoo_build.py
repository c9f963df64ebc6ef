"""Package a run trained from a zoo recipe into the pretrained zoo, with its measured card.

    python tools/zoo_build.py NAME --run RUN [--judge judge-spg5] [--data-dir data/spg20]

1. exports RUN into src/sketchlab/zoo/NAME (its best weights as float16, its config, a card
   holding the recipe of tools/zoo_recipes.py);
2. evaluates the PACKAGED entry (so the numbers are those of the weights that ship) with the
   commands a user runs (`sketchlab compare`, `sketchlab sample` + `sketchlab evaluate`,
   `sketchlab latent map`), on the held-out test split; the commands go into the card;
3. writes the card again with the metrics.
A developer tool: the package never runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo_recipes import BARS, NOTES, RECIPES  # noqa: E402

from sketchlab import __version__, runs, zoo  # noqa: E402
from sketchlab.cli import main  # noqa: E402
from sketchlab.fileio import atomic_write_json  # noqa: E402
from sketchlab.train import checkpoint as ckpt  # noqa: E402


def run_cli(argv: list[str]) -> str:
    """Run a sketchlab command in this process; its stdout (raises on failure)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv + (["--quiet"] if argv[0] in ("compare", "evaluate", "sample") else []))
    if rc != 0:
        raise SystemExit(f"`sketchlab {' '.join(argv)}` failed ({rc})")
    return out.getvalue()


def command(argv: list[str]) -> str:
    return "sketchlab " + " ".join(a if re.fullmatch(r"[\w./:=,@+-]+", a) else repr(a) for a in argv)


def row(result_json: Path, name: str) -> dict:
    rows = {r["set"]: r for r in json.loads(result_json.read_text())["rows"]}
    return rows[name]


KEEP = ("rec@1", "rec@10", "ret@1", "ret@10", "fid", "precision", "recall", "rec_any@1")


def pick(r: dict, prefix: str = "") -> dict:
    return {prefix + k: round(float(r[k]), 4) for k in KEEP if k in r}


def evaluate(name: str, recipe: dict, judge: str, data_dir: str, tmp: Path) -> tuple[dict, list]:
    """The entry's metrics on the test split, and the commands that give them."""
    model = recipe["model"]
    metrics, commands = {}, []
    base = ["--classifier", judge, "--data-dir", data_dir, "--no-gs", "--seed", "0"]
    if model == "sketch-a-net":
        argv = ["evaluate", "real:test", "--classifier", name, "--data-dir", data_dir,
                "--out", str(tmp / "judge.json"), "--no-gs", "--categories",
                ",".join(recipe["categories"])]
        run_cli(argv)
        commands.append(command(argv[:7] + ["judge.json"] + argv[8:]))
        metrics["test_accuracy"] = round(float(row(tmp / "judge.json", "real test (reference)")["rec@1"]), 4)
        return metrics, commands
    if model == "sketch-rnn" and recipe["categories"] == ["aaron_sheep"]:
        return metrics, commands
    if model in ("sketch-rnn", "rpcl-pix2seq", "rpcl-pix2seqh", "sp-gra2seq", "sketchgloc"):
        argv = ["compare", name, "--out", str(tmp / "compare.json")] + base
        run_cli(argv)
        commands.append(command(argv[:3] + ["compare.json"] + argv[4:]))
        metrics.update(pick(row(tmp / "compare.json", name)))
    heal = {"sp-gra2seq": [0.1, 0.3], "sketchgloc": [0.3], "sketchknitter": [0.3]}.get(model, [])
    for strength in heal:
        out = tmp / f"heal{strength}.npz"
        extra = ["--sampler", "ddim", "--steps", "30", "--spacing", "even"] if model == "sketchknitter" else []
        argv = ["sample", name, "--condition-on", "test", "--data-dir", data_dir, "--strength",
                str(strength), "--seed", "0", "--out", str(out)] + extra
        run_cli(argv)
        ev = ["evaluate", str(out), "--run", name, "--out", str(tmp / "heal.json")] + base
        run_cli(ev)
        commands += [command(argv[:-2 - len(extra)] + ["--out", out.name] + extra),
                     command(ev[:1] + [out.name] + ev[2:5] + ["heal.json"] + ev[6:])]
        metrics.update(pick(row(tmp / "heal.json", out.stem), f"heal{int(strength * 100)}_"))
    if model == "sketchknitter":
        for label, extra in (("ddpm", ["--sampler", "ddpm"]),
                             ("ddim30", ["--sampler", "ddim", "--steps", "30", "--spacing", "even"])):
            out = tmp / f"{label}.npz"
            argv = ["sample", name, "--n", "250", "--seed", "0", "--out", str(out)] + extra
            run_cli(argv)
            ev = ["evaluate", str(out), "--run", name, "--out", str(tmp / "s.json")] + base
            run_cli(ev)
            commands += [command(argv[:6] + [out.name] + extra),
                         command(ev[:1] + [out.name] + ev[2:5] + ["s.json"] + ev[6:])]
            metrics.update(pick(row(tmp / "s.json", out.stem), f"{label}_"))
    if model in ("rpcl-pix2seq", "rpcl-pix2seqh"):
        argv = ["latent", "map", name, "--data-dir", data_dir, "--out", str(tmp / "map.png")]
        text = run_cli(argv)
        commands.append(command(argv[:5] + ["map.png"]))
        alive = re.search(r"live prior components: (\d+)", text)
        metrics["live_components"] = int(alive.group(1)) if alive else None
        for key, nmi in re.findall(r"(\w+) vs category: NMI ([\d.]+)", text):
            metrics[f"nmi_{key}_category"] = float(nmi)
        (tmp / "map.png").replace(tmp.parent / f"{name}_map.png")
    return metrics, commands


def judge_card(name: str, card: dict) -> dict:
    """The card's bars (met or not, from its metrics) and the notes on what the run showed."""
    card["bars"] = {k: {"bar": bar, "reached": card["metrics"].get(k),
                        "met": card["metrics"].get(k) is not None and card["metrics"][k] >= bar}
                    for k, bar in BARS.get(name, {}).items()}
    if name in NOTES:
        card["notes"] = NOTES[name]
    return card


def main_build(args) -> int:
    if args.notes_only:     # the measured card kept; its bars and notes written again
        path = zoo.ZOO_DIR / args.name / zoo.CARD
        atomic_write_json(path, judge_card(args.name, json.loads(path.read_text())))
        return 0
    recipe = RECIPES[args.name]
    run = Path(args.run)
    state = torch.load(run / "state.pt", map_location="cpu", weights_only=True)
    info = ckpt.read_config_json(run)
    card = {
        "description": recipe["description"],
        "data": dict(recipe["data"], categories=recipe["categories"]),
        "recipe": {"model": recipe["model"], "categories": recipe["categories"],
                   "hparams": recipe["hparams"], "max_steps": recipe["max_steps"],
                   "data_dir": None, "data_import": recipe["data"]["import"],
                   "command": f"sketchlab zoo train {args.name} --data-dir {recipe['data_dir']} "
                              f"--out runs/{args.name}"},
        "steps": int(state["step"]),
        "train_minutes": round(float(state.get("elapsed", 0.0)) / 60, 1),
        "train_machine": args.machine,
        "differs_from_paper": recipe["differs"],
        "sketchlab_version": __version__,
        "torch_version": info.get("torch_version"),
        "metrics": {},
    }
    if recipe["model"] == "sketch-rnn" and recipe["categories"] == ["aaron_sheep"]:
        card["metrics"]["valid_loss"] = round(float(state["best_valid"]), 4)
    runs.export_to_zoo(run, args.name, card, dtype=args.dtype)
    if args.skip_eval:
        return 0
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d) / "eval"
        tmp.mkdir()
        metrics, commands = evaluate(args.name, recipe, args.judge, args.data_dir, tmp)
        for png in Path(d).glob("*_map.png"):
            png.replace(Path(args.figures) / png.name)
    card["metrics"].update(metrics)
    judge_card(args.name, card)
    card["evaluation"] = {"split": recipe["data"]["evaluated_on"], "judge": args.judge,
                          "commands": commands, "seconds": round(time.time() - t0)}
    final = json.loads((zoo.ZOO_DIR / args.name / zoo.CARD).read_text())
    final.update(card)
    atomic_write_json(zoo.ZOO_DIR / args.name / zoo.CARD, final)
    print(json.dumps({args.name: final["metrics"]}, indent=1))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(RECIPES))
    p.add_argument("--run", help="the trained run (not needed with --notes-only)")
    p.add_argument("--judge", default="judge-spg5")
    p.add_argument("--data-dir", default="data/spg20")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--figures", default="docs/results/zoo")
    p.add_argument("--machine", default="2 shared CPU cores (torch 2.13 CPU build), 1 thread")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--notes-only", action="store_true",
                   help="rewrite the packaged card's bars and notes, keeping its measurements")
    sys.exit(main_build(p.parse_args()))
