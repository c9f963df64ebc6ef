"""`sketchlab classifier train`, `sketchlab evaluate` and `sketchlab compare`."""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from pathlib import Path

import torch

from sketchlab.config import from_dict
from sketchlab.data.sketches import Sketches
from sketchlab.data.sources import parse_categories
from sketchlab.errors import DataError
from sketchlab.eval.evaluate import (EvalConfig, compare_runs, evaluate_sets, load_split,
                                     markdown_table, per_category_counts)
from sketchlab.eval.judge import make_extractor
from sketchlab.fileio import atomic_write_json, atomic_write_text
from sketchlab.models.sketch_a_net import Config as JudgeConfig
from sketchlab.models.sketch_a_net import SketchANet
from sketchlab.nn.device import pick_device
from sketchlab.runs import load_judge, model_run_hooks
from sketchlab.train import checkpoint as ckpt
from sketchlab.train.trainer import Trainer, init_distributed, prepare_data

_FMT = argparse.RawDescriptionHelpFormatter   # keeps the examples' line breaks


def _wrap(text: str) -> str:
    return textwrap.fill(text, 95)


# ------------------------------------------------------------------------------------------------
# sketchlab classifier train
# ------------------------------------------------------------------------------------------------


def _judge_config(out: Path, args) -> JudgeConfig:
    """The judge's config from the flags, or the saved one when `out` holds a run to resume."""
    if (out / "state.pt").is_file():
        info = ckpt.read_run_config(out, expect_model=SketchANet.name)
        print(f"note: resuming {out} with its saved hyperparameters")
        return from_dict(JudgeConfig, info["config"], where=str(out / "config.json"))
    return dataclasses.replace(JudgeConfig(), batch_size=args.batch_size, learning_rate=args.lr,
                               seed=args.seed, amp=not args.no_amp, width=args.width)


def cmd_classifier_train(args) -> int:
    cats = parse_categories(args.categories)
    out = Path(args.out)
    config = _judge_config(out, args)
    raw = {"train": load_split(args.data_dir, cats, args.train_split, args.limit),
           "valid": load_split(args.data_dir, cats, args.valid_split, args.valid_limit)}
    data = prepare_data(SketchANet, config, raw)
    torch.manual_seed(config.seed)
    model = SketchANet(data.config)
    device = pick_device(args.device)
    init_distributed(device)             # under torchrun: join the process group (else nothing)
    run_info = {"data_dir": str(Path(args.data_dir).resolve()), "splits": {
        "train": args.train_split, "valid": args.valid_split}, "limit": args.limit,
        "valid_limit": args.valid_limit}
    trainer = Trainer(model, data, out, device=device, max_steps=args.max_steps,
                      max_epochs=args.epochs, progress=not args.quiet, run_info=run_info)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"training Sketch-a-Net (width {data.config.width}, {n_params / 1e6:.2f}M parameters) "
          f"on {len(data.splits['train'])} sketches of {len(cats)} categories, validating on "
          f"{len(data.splits['valid'])} ({args.valid_split}); {trainer.device}; run dir {out}")
    summary = trainer.train()
    print(f"best validation accuracy {1.0 - summary['best_valid']:.4f} (step {summary['step']}, "
          f"epoch {summary['epoch']}); saved to {out}")
    return 0


# ------------------------------------------------------------------------------------------------
# sketchlab evaluate / compare
# ------------------------------------------------------------------------------------------------


def _eval_config(args) -> EvalConfig:
    return EvalConfig(batch_size=args.batch_size, gs=not args.no_gs, gs_runs=args.gs_runs,
                      gs_workers=args.gs_workers, seed=args.seed)


def _other_split(reference_split: str, requested: str) -> str | None:
    if requested == "none":
        return None
    if requested != "auto":
        return requested
    return {"test": "valid", "valid": "test"}.get(reference_split)


def _load_real(args, cats, counts, exclude: str | None):
    split = _other_split(args.reference_split, args.real_split)
    if split is None or split == exclude or split == args.reference_split:
        return None, None
    try:
        return load_split(args.data_dir, cats, split, counts), split
    except DataError as e:
        if args.real_split != "auto":
            raise
        print(f"note: no real {split!r} row ({e})")
        return None, None


def _write_result(result: dict, out: Path, table_path: Path | None) -> None:
    atomic_write_json(out, result)
    table = markdown_table(result)
    atomic_write_text(table_path or out.with_suffix(".md"), table)
    print(table, end="")


def cmd_evaluate(args) -> int:
    device = pick_device(args.device)
    clf = load_judge(args.classifier, device=device, batch_size=args.batch_size)
    extractor = make_extractor(args.features, clf, device, args.batch_size)
    wanted = parse_categories(args.categories)
    real_samples_split = None
    if args.samples.startswith("real:"):
        real_samples_split = args.samples.split(":", 1)[1]
        cats = wanted or list(clf.categories)
        samples = load_split(args.data_dir, cats, real_samples_split, args.per_category)
    else:
        samples = Sketches.load(args.samples)
        if wanted:
            keep = [i for i in range(len(samples)) if samples.category_name(i) in wanted]
            if not keep:
                raise DataError(f"{args.samples}: no sketch of categories {wanted}")
            samples = samples.select(keep)
    counts = per_category_counts(samples)
    cats = list(counts)
    if args.per_category is not None:
        counts = {c: min(n, args.per_category) for c, n in counts.items()}
    reference = load_split(args.data_dir, cats, args.reference_split, counts)
    real, real_split = _load_real(args, cats, counts, real_samples_split)
    retrieval = None
    default_name = f"real {real_samples_split}" if real_samples_split else Path(args.samples).stem
    name = args.name or default_name
    if args.run:
        if samples.z is None:
            raise DataError(f"{args.samples}: Ret needs the code each sample was generated from "
                            f"(`z`), and these samples carry none")
        hooks = model_run_hooks(Path(args.run), device=device)
        retrieval = {name: (samples.z, hooks.encode(samples))}
    result = evaluate_sets({name: samples}, reference, clf, real=real, extractor=extractor,
                           retrieval=retrieval, config=_eval_config(args),
                           reference_name=f"real {args.reference_split} (reference)",
                           real_name=f"real {real_split}", progress=not args.quiet)
    result["protocol"]["samples"] = args.samples
    _write_result(result, Path(args.out), Path(args.table) if args.table else None)
    return 0


def cmd_compare(args) -> int:
    device = pick_device(args.device)
    clf = load_judge(args.classifier, device=device, batch_size=args.batch_size)
    extractor = make_extractor(args.features, clf, device, args.batch_size)
    cats = parse_categories(args.categories) or list(clf.categories)
    reference = load_split(args.data_dir, cats, args.reference_split, args.per_category)
    counts = per_category_counts(reference)
    real, real_split = _load_real(args, cats, counts, None)
    result = compare_runs(
        args.runs, lambda run: model_run_hooks(run, device=device, temperature=args.temperature),
        reference, clf, real=real, extractor=extractor, config=_eval_config(args),
        reference_name=f"real {args.reference_split} (reference)", real_name=f"real {real_split}",
        progress=not args.quiet)
    _write_result(result, Path(args.out), Path(args.table) if args.table else None)
    return 0


# ------------------------------------------------------------------------------------------------
# Parsers
# ------------------------------------------------------------------------------------------------


def _common_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classifier", required=True, help="run dir of `sketchlab classifier train`")
    p.add_argument("--data-dir", required=True, help="folder of per-category sketch-rnn .npz files")
    p.add_argument("--out", required=True, help="metrics JSON to write (the table goes next to it "
                                                "as .md unless --table says otherwise)")
    p.add_argument("--table", help="markdown table file (default: OUT with .md)")
    p.add_argument("--categories", help="comma-separated subset of categories")
    p.add_argument("--reference-split", default="test", help="real split to compare against "
                                                              "(default test)")
    p.add_argument("--real-split", default="auto",
                   help="real split scored like samples as a reference row: auto (valid for a test "
                        "reference and vice versa, skipped if absent), a split name, or none")
    p.add_argument("--per-category", type=int, help="cap on sketches per category")
    p.add_argument("--features", default="classifier",
                   help="feature extractor for FID/P-R/GS: classifier (default) or "
                        "inception:PATH (a local FID Inception-v3 state dict)")
    p.add_argument("--gs-runs", type=int, default=100, help="witness-complex runs per set (100)")
    p.add_argument("--gs-workers", type=int, help="processes for GS (default: one per core)")
    p.add_argument("--no-gs", action="store_true", help="skip the Geometry Score")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def register_cli(subparsers) -> None:
    clf = subparsers.add_parser(
        "classifier", help="train the Sketch-a-Net judge used by `sketchlab evaluate`",
        formatter_class=_FMT, description=_wrap("The Sketch-a-Net classifier behind Rec, IS and the "
                                          "default features for FID, precision/recall and GS."))
    clf_sub = clf.add_subparsers(dest="classifier_command", metavar="COMMAND")
    t = clf_sub.add_parser(
        "train", help="train Sketch-a-Net on rasterized sketches", formatter_class=_FMT,
        description=_wrap("Train Sketch-a-Net (Yu et al.; 225x225 input, 8 layers, dropout 0.5) on "
                    "sketches rendered on the fly (random 225 crops of 256 renders, flips, the "
                    "seeds' stroke augmentations) with sketchlab's trainer, into a normal run "
                    "directory (the same as `sketchlab train sketch-a-net`). Keeps the checkpoint "
                    "with the best validation accuracy; running the same command again resumes."),
        epilog="examples:\n  sketchlab classifier train --data-dir data/spg20 "
               "--categories airplane,apple,pig --out runs/clf --epochs 30\n"
               "  sketchlab classifier train --data-dir data/spg20 --categories airplane,apple,pig "
               "--out runs/clf-small --width 0.5")
    t.add_argument("--data-dir", required=True, help="folder of per-category sketch-rnn .npz files")
    t.add_argument("--categories", required=True, help="comma-separated category names")
    t.add_argument("--out", required=True, help="run directory to write")
    t.add_argument("--epochs", type=int, default=30, help="epochs to train (default 30)")
    t.add_argument("--batch-size", type=int, default=JudgeConfig.batch_size)
    t.add_argument("--lr", type=float, default=JudgeConfig.learning_rate,
                   help=f"Adam's initial learning rate (x{JudgeConfig.decay_rate} a step)")
    t.add_argument("--width", type=float, default=JudgeConfig.width,
                   help="channel multiplier: 1.0 is the paper's network (8.4M weights); 0.5 keeps "
                        "a quarter (4.2 MB as fp16), 3-4x faster on a CPU")
    t.add_argument("--limit", type=int, help="training sketches per category (default all)")
    t.add_argument("--valid-limit", type=int, help="validation sketches per category")
    t.add_argument("--train-split", default="train")
    t.add_argument("--valid-split", default="valid")
    t.add_argument("--max-steps", type=int, help="stop after this many steps (smoke tests)")
    t.add_argument("--no-amp", action="store_true", help="train in float32 on CUDA")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_classifier_train)

    ev = subparsers.add_parser(
        "evaluate", help="score generated sketches: Rec, Ret, FID, IS, precision/recall, GS",
        formatter_class=_FMT,
        description=_wrap("Score SAMPLES (a sketchlab Sketches .npz with categories, or real:SPLIT for "
                    "real sketches) against the real reference split of the same categories, "
                    "with as many sketches per category. Writes metrics JSON and a markdown table "
                    "that also holds the reference rows (real test; real valid scored like "
                    "samples). FID/IS/P-R/GS use the classifier's features unless --features "
                    "says otherwise: not comparable with ImageNet-Inception numbers."),
        epilog="examples:\n"
               "  sketchlab evaluate samples.npz --classifier runs/clf --data-dir data/spg20 "
               "--out metrics.json\n"
               "  sketchlab evaluate real:valid --classifier runs/clf --data-dir data/spg20 "
               "--reference-split train --out real.json\n"
               "  sketchlab evaluate samples.npz --run runs/pix2seq ... --out m.json   # adds Ret")
    ev.add_argument("samples", metavar="SAMPLES", help="Sketches .npz, or real:SPLIT")
    ev.add_argument("--run", help="run dir of the model that generated SAMPLES (for Ret; the "
                                  "samples must carry z)")
    ev.add_argument("--name", help="row name (default: the samples file's stem)")
    _common_eval_args(ev)
    ev.set_defaults(func=cmd_evaluate)

    cmp = subparsers.add_parser(
        "compare", help="sample several runs on the same references and score them in one table",
        formatter_class=_FMT,
        description=_wrap("For each RUN, generate one sketch per reference sketch (conditioned on it), "
                    "re-encode for Ret, and score all runs with `sketchlab evaluate`'s protocol. "
                    "Trains nothing."),
        epilog="example:\n  sketchlab compare runs/sketchrnn runs/pix2seq --classifier runs/clf "
               "--data-dir data/spg20 --per-category 100 --out table.json")
    cmp.add_argument("runs", nargs="+", metavar="RUN")
    cmp.add_argument("--temperature", type=float, default=None,
                     help="sampling temperature for every run (default: each model's own, as its "
                          "original samples: 0.24 for the RPCL / SP-gra2seq / SketchGloc seeds)")
    _common_eval_args(cmp)
    cmp.set_defaults(func=cmd_compare)
