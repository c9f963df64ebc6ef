"""`sketchlab classifier train`, `sketchlab evaluate` and `sketchlab compare`."""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from pathlib import Path

import numpy as np
import torch

from sketchlab.config import from_dict
from sketchlab.data.sketches import Sketches
from sketchlab.data.sources import parse_categories
from sketchlab.errors import ConfigError, DataError
from sketchlab.eval.evaluate import (EvalConfig, category_problem, check_judge_knows, compare_runs,
                                     evaluate_sets, is_unconditional, load_split, markdown_table,
                                     per_category_counts)
from sketchlab.eval.judge import make_extractor
from sketchlab.fileio import atomic_write_json, atomic_write_text
from sketchlab.models.sketch_a_net import Config as JudgeConfig
from sketchlab.models.sketch_a_net import SketchANet
from sketchlab.nn.device import pick_device
from sketchlab import runs
from sketchlab.runs import load_judge, model_run_hooks, reference_limit, usable_references
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


def _mismatch(args, name: str, problem: str | None, marks: dict) -> None:
    """Refuse a category mismatch, or record it for the table with --allow-category-mismatch."""
    if not problem:
        return
    if not args.allow_category_mismatch:
        raise ConfigError(f"{name}: categories do not match ({problem}), so the scores would not "
                          f"mean what they seem. Evaluate on the run's own categories (with a "
                          f"judge and data of them), or pass --allow-category-mismatch to score "
                          f"anyway (the row is marked)")
    print(f"warning: {name}: {problem}; scored anyway and marked in the table")
    marks[name] = problem


def cmd_evaluate(args) -> int:
    device = pick_device(args.device)
    clf = load_judge(args.classifier, device=device, batch_size=args.batch_size)
    extractor = make_extractor(args.features, clf, device, args.batch_size)
    wanted = parse_categories(args.categories)
    run = runs.open_run(args.run, device=device) if args.run else None
    real_samples_split = None
    if args.samples.startswith("real:"):
        real_samples_split = args.samples.split(":", 1)[1]
        cats = wanted or list(clf.categories)
        samples = load_split(args.data_dir, cats, real_samples_split, args.per_category)
    else:
        samples = Sketches.load(args.samples)
        if samples.category is None and not samples.category_names:
            # Samples of an older sketchlab, or from elsewhere: they were drawn from the run's
            # categories (--run), or the ones --categories names.
            drawn = (run.categories if run is not None else None) or wanted
            if drawn:
                samples.category_names = tuple(drawn)
                if len(drawn) == 1:
                    samples.category = np.zeros(len(samples), np.int64)
        elif wanted and samples.category is not None:
            keep = [i for i in range(len(samples)) if samples.category_name(i) in wanted]
            if not keep:
                raise DataError(f"{args.samples}: no sketch of categories {wanted}")
            samples = samples.select(keep)
    default_name = f"real {real_samples_split}" if real_samples_split else Path(args.samples).stem
    name = args.name or default_name
    unconditional = is_unconditional(samples)
    counts = per_category_counts(samples)
    cats = list(counts)
    check_judge_knows(cats, clf.categories, name)
    marks: dict[str, str] = {}
    if unconditional and wanted and set(wanted) != set(cats):
        _mismatch(args, name, f"drawn from {', '.join(cats)}, --categories says "
                              f"{', '.join(wanted)}", marks)
    if run is not None:
        _mismatch(args, name, category_problem(run.categories, cats,
                                               conditional=not unconditional), marks)
    if args.per_category is not None:
        counts = {c: min(n, args.per_category) for c, n in counts.items()}
        if unconditional:
            samples = samples.select(np.arange(min(len(samples), sum(counts.values()))))
    reference = load_split(args.data_dir, cats, args.reference_split, counts)
    real, real_split = _load_real(args, cats, counts, real_samples_split)
    retrieval = None
    if run is not None:
        if samples.z is None:
            print(f"note: {args.samples} carries no codes (`z`), so no Ret (retrieval) row "
                  f"values; --run still checked its categories")
        elif not run.model.can_encode:
            print(f"note: a {run.model_name} model has no encoder: no Ret")
        else:
            hooks = model_run_hooks(Path(args.run), device=device)
            ok = usable_references(run.model, samples)
            if not ok.all():
                print(f"note: Ret: {int((~ok).sum())} of {len(samples)} samples left out of "
                      f"retrieval ({reference_limit(run.model)})")
            kept = samples.select(np.nonzero(ok)[0])
            retrieval = {name: (kept.z, hooks.encode(kept))}
    result = evaluate_sets({name: samples}, reference, clf, real=real, extractor=extractor,
                           retrieval=retrieval, config=_eval_config(args),
                           reference_name=f"real {args.reference_split} (reference)",
                           real_name=f"real {real_split}", progress=not args.quiet, marks=marks)
    result["protocol"]["samples"] = args.samples
    if unconditional:
        result["protocol"]["unconditional"] = {name: list(cats)}
    _write_result(result, Path(args.out), Path(args.table) if args.table else None)
    return 0


def cmd_compare(args) -> int:
    device = pick_device(args.device)
    clf = load_judge(args.classifier, device=device, batch_size=args.batch_size)
    extractor = make_extractor(args.features, clf, device, args.batch_size)
    cats = parse_categories(args.categories) or list(clf.categories)
    check_judge_knows(cats, clf.categories, "--categories")
    reference = load_split(args.data_dir, cats, args.reference_split, args.per_category)
    counts = per_category_counts(reference)
    real, real_split = _load_real(args, cats, counts, None)
    result = compare_runs(
        args.runs, lambda run: model_run_hooks(run, device=device, temperature=args.temperature,
                                               seed=args.seed, progress=not args.quiet),
        reference, clf, real=real, extractor=extractor, config=_eval_config(args),
        reference_name=f"real {args.reference_split} (reference)", real_name=f"real {real_split}",
        progress=not args.quiet, allow_category_mismatch=args.allow_category_mismatch, log=print)
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
    p.add_argument("--categories", help="comma-separated categories to score (default: all the "
                                        "samples hold / all the judge knows)")
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
    p.add_argument("--allow-category-mismatch", action="store_true",
                   help="score a run whose categories differ from the references' (refused by "
                        "default); its row is marked with * and the difference noted")
    p.add_argument("--batch-size", type=int, default=256,
                   help="sketches per batch through the judge (and per sampling batch)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the Geometry Score's landmarks and of the sampling (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--quiet", action="store_true", help="no progress display")


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
    t.add_argument("--batch-size", type=int, default=JudgeConfig.batch_size,
                   help=f"sketches per training step (default {JudgeConfig.batch_size})")
    t.add_argument("--lr", type=float, default=JudgeConfig.learning_rate,
                   help=f"Adam's initial learning rate (x{JudgeConfig.decay_rate} a step)")
    t.add_argument("--width", type=float, default=JudgeConfig.width,
                   help="channel multiplier: 1.0 is the paper's network (8.4M weights); 0.5 keeps "
                        "a quarter (4.2 MB as fp16), 3-4x faster on a CPU")
    t.add_argument("--limit", type=int, help="training sketches per category (default all)")
    t.add_argument("--valid-limit", type=int, help="validation sketches per category")
    t.add_argument("--train-split", default="train", help="split to train on (default train)")
    t.add_argument("--valid-split", default="valid",
                   help="split that picks the best checkpoint (default valid)")
    t.add_argument("--max-steps", type=int, help="stop after this many steps (smoke tests)")
    t.add_argument("--no-amp", action="store_true", help="train in float32 on CUDA")
    t.add_argument("--seed", type=int, default=0,
                   help="seed of the weights, the data order and the augmentations (default 0)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    t.add_argument("--quiet", action="store_true", help="no progress display")
    t.set_defaults(func=cmd_classifier_train)

    ev = subparsers.add_parser(
        "evaluate", help="score generated sketches: Rec, Ret, FID, IS, precision/recall, GS",
        formatter_class=_FMT,
        description=_wrap("Score SAMPLES (a sketchlab Sketches .npz, as `sketchlab sample` writes "
                    "it, or real:SPLIT for real sketches) against the real reference split of the "
                    "same categories, with as many sketches per category. Conditional samples "
                    "carry each its input's category (Rec: recognised as that category); free "
                    "samples of a model of several categories carry the categories they were "
                    "drawn from (Rec(any): recognised as any of them, plus the judge's class "
                    "histogram; the reference takes an equal share of each). With --run, the "
                    "run's categories are checked against the samples' (a mismatch is refused "
                    "unless --allow-category-mismatch) and Ret is added when the samples carry "
                    "codes. Writes metrics JSON and a markdown table that also holds the "
                    "reference rows (real test; real valid scored like samples). FID/IS/P-R/GS "
                    "use the classifier's features unless --features says otherwise: not "
                    "comparable with ImageNet-Inception numbers."),
        epilog="examples:\n"
               "  sketchlab evaluate samples.npz --classifier runs/clf --data-dir data/spg20 "
               "--out metrics.json\n"
               "  sketchlab evaluate real:valid --classifier runs/clf --data-dir data/spg20 "
               "--reference-split train --out real.json\n"
               "  sketchlab evaluate samples.npz --run runs/pix2seq ... --out m.json   # adds Ret")
    ev.add_argument("samples", metavar="SAMPLES", help="Sketches .npz, or real:SPLIT")
    ev.add_argument("--run", help="run dir of the model that generated SAMPLES: its categories "
                                  "are checked, and Ret is added when the samples carry z")
    ev.add_argument("--name", help="row name (default: the samples file's stem)")
    _common_eval_args(ev)
    ev.set_defaults(func=cmd_evaluate)

    cmp = subparsers.add_parser(
        "compare", help="sample several runs on the same references and score them in one table",
        formatter_class=_FMT,
        description=_wrap("For each RUN, generate one sketch per reference sketch (conditioned on "
                    "it; a model that takes no references draws as many free samples), re-encode for "
                    "Ret, and score all runs with `sketchlab evaluate`'s protocol. Each run's "
                    "categories are checked against the references' (a mismatch is refused "
                    "unless --allow-category-mismatch, which marks the row). References some "
                    "run cannot take (longer than its max_seq_len or SketchKnitter's "
                    "num_points) are left out for every run, and counted. Trains nothing."),
        epilog="example:\n  sketchlab compare runs/sketchrnn runs/pix2seq --classifier runs/clf "
               "--data-dir data/spg20 --per-category 100 --out table.json")
    cmp.add_argument("runs", nargs="+", metavar="RUN",
                     help="run directories (or pretrained names) to compare")
    cmp.add_argument("--temperature", type=float, default=None,
                     help="sampling temperature for every run (default: each model's own, as its "
                          "original samples: 0.24 for the RPCL / SP-gra2seq / SketchGloc seeds)")
    _common_eval_args(cmp)
    cmp.set_defaults(func=cmd_compare)
