"""`sketchlab train` and `sketchlab sample`."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import textwrap
import time
import types
import typing
from pathlib import Path

import numpy as np
import torch

from sketchlab.config import TrainingConfig, apply_hparams, field_help, from_dict, split_hparams
from sketchlab.data.sources import load_splits, parse_categories
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError
from sketchlab.models import (
    MODELS, PRESETS, get_model_class, model_classes, models_with, paper_categories, preset,
)
from sketchlab.train import checkpoint as ckpt
from sketchlab.nn.device import pick_device
from sketchlab.train.trainer import Trainer, init_distributed, prepare_data
from sketchlab import runs

TRAIN_DESCRIPTION = """\
Train MODEL into a run directory (--out): config.json, weights (model.safetensors, the best as
best.safetensors), log.csv and loss.png. Data: per-category sketch-rnn .npz files (--data-dir +
--categories; `sketchlab data import|download` makes them) or, without --data-dir, the built-in
doodles. Each model starts from its defaults (the original code's values, bugs corrected) or a
--preset (paper, cpu); `--list-hparams` prints every hyperparameter with its default (or the
preset's value) and meaning, `--hparams "name=value,..."` changes them (the original
repositories' syntax). Training stops at --max-steps / --max-epochs / --max-minutes or by early
stopping; running the same command again resumes from the last checkpoint.
"""

TRAIN_EPILOG = """examples:
  sketchlab train sketch-rnn --list-hparams                                # what can be set
  sketchlab train sketch-rnn --out runs/doodles --max-steps 2000          # built-in doodles
  sketchlab train sketch-rnn --data-dir data/sketchrnn --categories aaron_sheep --out runs/sheep \\
      --hparams "dec_model=layer_norm,dec_rnn_size=512"
  sketchlab train rpcl-pix2seq --data-dir data/spg --out runs/rpcl \\
      --hparams "categories=[airplane,apple,butterfly,cactus,pig],batch_size=200"
  sketchlab train sketchknitter --preset paper --data-dir data/qd --out runs/moon   # as the original
  sketchlab train sp-gra2seq --preset cpu --data-dir data/spg --categories apple,pig --out runs/sp

Presets (--hparams apply on top; the preset is recorded in config.json):
  paper  the original code as released: the paper's sizes, data settings and every quirk the
         original has (listed in each model's docstring and the README), float32 throughout
         (no bf16 autocast in training, validation or sampling). Without --categories it trains
         on the original's own category list.
  cpu    a small configuration that trains in under an hour on 2 CPU cores.
Without --preset each model starts from its defaults: the original's values, with the corrected
behaviour where sketchlab corrects a bug and bf16 autocast on CUDA.

SketchKnitter's r-Shortcut sampler is sketchlab's reconstruction: the released code never trains
its recognizability predictor (`h_model` gets no gradient) and has no shortcut function.

Running the same command again resumes from the run's last checkpoint.
"""

SAMPLE_DESCRIPTION = """\
Draw sketches from a trained run (a run directory, or a pretrained name from `sketchlab zoo
list`): new ones from the model's prior, or one per reference sketch (--condition-on: redrawn
from its code, healed from a corrupted copy, or refined). Writes the sketches as a pickle-free
.npz in raw data units (what `sketchlab evaluate` and `sketchlab render` read) and a picture
beside it: conditional samples under the input each was drawn from (and the corrupted input, for
healing), free samples with a caption naming the model, the run and the temperature. References
a model cannot take (longer than its max_seq_len, or SketchKnitter's num_points) are left out
and counted.
"""

SAMPLE_EPILOG = """examples:
  sketchlab sample runs/sheep --out sheep.npz --n 64 --temperature 0.3     # + sheep.png
  sketchlab sample runs/rpcl --out cond.npz --condition-on test --n 100
  sketchlab sample runs/rpcl --out comp3.npz --component 3 --n 25
  sketchlab sample runs/rpcl --out std.npz --prior standard --n 25      # z ~ N(0, I) as sample.py
  sketchlab sample runs/knitter --out healed.npz --condition-on broken.npz --strength 0.3
  sketchlab sample runs/sp --out healed.npz --condition-on test --strength 0.1   # SP-gra2seq, SketchGloc
  sketchlab sample runs/knitter --out fast.npz --sampler rshortcut --classifier runs/clf \\
      --calibration-sketches 64                       # calibrate the r-Shortcut once, then sample

The model options are each model's sampling Options; a flag the run's model does not take is
refused. --out FILE.npz writes FILE.png beside it; --out FILE.png (or .svg) writes FILE.npz
beside it.

SketchKnitter's r-Shortcut (--sampler rshortcut) is sketchlab's reconstruction of the paper's
recognizability shortcut: the released code never trains its predictor (`h_model` gets no
gradient) and has no shortcut function; --classifier calibrates sketchlab's predictor once.
"""


def register_cli(sub) -> None:
    p = sub.add_parser("train", help="train a model", description=TRAIN_DESCRIPTION,
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=list(MODELS), metavar="MODEL",
                   help=f"which model: {', '.join(MODELS)}")
    p.add_argument("--data-dir", default=None,
                   help="folder of sketch-rnn npz files (one per category); default: built-in doodles")
    p.add_argument("--categories", default=None,
                   help="comma-separated categories, e.g. cat,bus (or categories=[...] in --hparams)")
    p.add_argument("--out", default=None,
                   help="run directory (created; resumed if it holds a checkpoint); required unless "
                        "--list-hparams")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="start from a preset configuration: " + "; ".join(
                       f"{k}: {v}" for k, v in PRESETS.items()) + " (--hparams apply on top)")
    p.add_argument("--hparams", default=None,
                   help='overrides in the originals\' syntax: "k=v,k=[x,y]" (see --list-hparams)')
    p.add_argument("--list-hparams", action="store_true",
                   help="print every hyperparameter of MODEL with its default and meaning, and exit")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in total")
    p.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop after this many minutes of training in this invocation (validates and "
                        "checkpoints first; run again to resume)")
    p.add_argument("--limit-per-category", type=int, default=None,
                   help="use at most this many sketches per category and split")
    p.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: best available)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress display (the log lines and validation results still print)")
    p.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw sketches from a trained run", description=SAMPLE_DESCRIPTION,
                       epilog=SAMPLE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("run", metavar="RUN",
                   help="run directory made by `sketchlab train`, or a pretrained name (`sketchlab zoo list`)")
    s.add_argument("--out", required=True,
                   help="the samples: FILE.npz (a FILE.png picture is written beside it), or the "
                        "picture: FILE.png / FILE.svg (the samples go beside it as FILE.npz)")
    s.add_argument("--n", type=int, default=None,
                   help="how many sketches (default 64, or one per --condition-on reference)")
    s.add_argument("--data-dir", default=None,
                   help="where the run's data lives now, for --condition-on test|valid|train "
                        "(a pretrained model records no data folder)")
    s.add_argument("--condition-on", default=None,
                   help="test | valid | train (the run's data) or a .npz file of reference sketches")
    s.add_argument("--strength", type=float, default=None, help=_strength_help())
    s.add_argument("--classifier", default=None,
                   help="a `sketchlab classifier train` run: calibrates SketchKnitter's r-Shortcut "
                        "(--sampler rshortcut; sketchlab's reconstruction, the released code never "
                        "trains its predictor) from its recognizability scores, saved into RUN")
    s.add_argument("--calibration-sketches", type=int, default=runs.CALIBRATION_SKETCHES,
                   help="with --classifier: sampling chains the r-Shortcut calibration walks (default "
                        "%(default)s; the curve reads half as many more); fewer is faster and noisier")
    s.add_argument("--seed", type=int, default=0,
                   help="random seed: the same seed and options give the same sketches (default 0)")
    add_option_flags(s.add_argument_group("model options (each model's sampling Options)"))
    s.add_argument("--which", choices=["best", "latest"], default=None,
                   help="which weights: best (lowest validation loss) or latest (the final ones); "
                        "default: the model's choice (best; SketchKnitter's faithful mode and "
                        "paper preset: latest, as the original samples its last checkpoint)")
    s.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: best available)")
    s.set_defaults(func=cmd_sample)


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------


def _config_for_run(cls, out: Path, hparams: str | None, preset_name: str | None = None):
    """A fresh config (the preset's, or the model's defaults) with --hparams applied, or the
    saved one when resuming `out`."""
    if (out / "state.pt").is_file():
        info = ckpt.read_run_config(out, expect_model=cls.name)
        cfg = from_dict(cls.Config, info["config"], where=str(out / "config.json"))
        if hparams and apply_hparams(cfg, hparams) != cfg:
            print(f"note: resuming {out}: its saved hyperparameters are used; --hparams ignored")
        if preset_name and preset_name != info.get("preset"):
            print(f"note: resuming {out}: its saved configuration (preset "
                  f"{info.get('preset') or 'none'}) is used; --preset {preset_name} ignored")
        return cfg, info
    base = preset(cls.name, preset_name) if preset_name else cls.Config()
    return apply_hparams(base, hparams), None


def cmd_train(args) -> int:
    cls = get_model_class(args.model)
    if args.list_hparams:
        config = preset(cls.name, args.preset) if args.preset else None
        print(hparams_table(cls, config=config, preset_name=args.preset), end="")
        return 0
    if args.out is None:
        raise ConfigError("--out is required: the run directory to train into (or resume)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():   # before minutes of data preparation
        raise ConfigError(f"--out {out}: a file, not a run directory; give a folder")
    if args.max_minutes is not None and not args.max_minutes >= 0:
        raise ConfigError(f"--max-minutes {args.max_minutes}: must be a number >= 0")
    categories = parse_categories(args.categories)
    rest = []
    for k, v in split_hparams(args.hparams or ""):
        if k == "categories":            # the originals keep the category list in their hparams
            categories = parse_categories(v, flag="--hparams categories")
        else:
            rest.append(f"{k}={v}")
    cfg, saved = _config_for_run(cls, out, ",".join(rest), args.preset)
    preset_name = args.preset
    if saved is not None:
        if categories and saved.get("categories") and categories != list(saved["categories"]):
            raise ConfigError(f"--categories {','.join(categories)}: {out} was trained on "
                              f"{','.join(saved['categories'])}; resuming it keeps the run's "
                              f"categories (drop --categories), or train these into another --out")
        categories = saved.get("categories") or categories
        data_dir = saved.get("data_dir", args.data_dir)
        limit = saved.get("limit_per_category", args.limit_per_category)
        preset_name = saved.get("preset")
    else:
        data_dir, limit = args.data_dir, args.limit_per_category
        if preset_name == "paper" and data_dir is not None and not categories:
            categories = list(paper_categories(cls.name))
            if categories:
                print(f"preset paper: the original's categories {','.join(categories)} (give "
                      f"--categories to choose others)")
    if data_dir is None:
        print("no --data-dir: training on the built-in doodles")
    t0 = time.time()
    raw = load_splits(data_dir, categories or None, limit_per_category=limit, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    data = prepare_data(cls, cfg, raw)
    print(f"data: {', '.join(f'{k} {len(v)}' for k, v in data.splits.items())} sketches; "
          f"categories {', '.join(data.categories)}; scale factor {data.scale_factor:.4f} "
          f"({time.time() - t0:.1f}s)")
    left_out = {k: len(raw[k]) - len(v) for k, v in data.splits.items() if k in raw}
    if any(left_out.values()):
        print("left out by the model's data filter (empty, too long or degenerate sketches): "
              + ", ".join(f"{k} {n}" for k, n in left_out.items()))
    if getattr(data.config, "max_seq_len", 0) > 0:
        print(f"max_seq_len {data.config.max_seq_len}")
    model = cls(data.config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{cls.name}: {n_params / 1e6:.2f}M parameters")
    run_info = {"data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
                "limit_per_category": limit, "preset": preset_name}
    max_seconds = None if args.max_minutes is None else 60.0 * args.max_minutes
    device = pick_device(args.device)
    init_distributed(device)             # under torchrun: join the process group (else nothing)
    trainer = Trainer(model, data, out, device=device, max_steps=args.max_steps,
                      max_epochs=args.max_epochs, max_seconds=max_seconds,
                      progress=not (args.no_progress or getattr(args, "quiet", False)),
                      run_info=run_info)
    print(f"device: {trainer.device}")
    summary = trainer.train()
    print(f"done: step {summary['step']}, epoch {summary['epoch']}, best valid "
          f"{model.config.valid_metric} {summary['best_valid']:.4f}; run in {out}")
    _draw_loss_curve(out)
    return 0


def hparams_table(cls, width: int | None = None, config=None, preset_name: str | None = None) -> str:
    """Every field of a model's Config: name, default (or `config`'s value, e.g. a preset's) and
    meaning (the comments in the Config classes), the model's own fields first, then the
    training fields every model shares."""
    width = width or min(110, max(80, shutil.get_terminal_size((100, 24)).columns))
    help_text = field_help(cls.Config)
    defaults = config if config is not None else cls.Config()
    shared = {f.name for f in dataclasses.fields(TrainingConfig)}
    fields = dataclasses.fields(cls.Config)
    groups = [(f"{cls.name}", [f for f in fields if f.name not in shared]),
              ("training (every model)", [f for f in fields if f.name in shared])]
    rows = [(f.name, _default_text(getattr(defaults, f.name)), help_text.get(f.name, ""))
            for f in fields]
    name_w = max(len(r[0]) for r in rows) + 2
    value_w = min(max(len(r[1]) for r in rows), 22) + 2
    source = f"preset {preset_name}" if preset_name else "the original code's, bugs corrected"
    lines = [f"{cls.name} hyperparameters: set them with --hparams \"name=value,...\" (values: "
             f"{source})", ""]
    for title, group in groups:
        if not group:
            continue
        lines.append(f"{title}:")
        for f in group:
            value = _default_text(getattr(defaults, f.name))
            head = f"  {f.name:<{name_w}}{value:<{value_w}}"
            if len(value) >= value_w:
                head = f"  {f.name:<{name_w}}{value}  "
            wrapped = textwrap.wrap(help_text.get(f.name, "") or "-",
                                    max(30, width - 2 - name_w - value_w))
            lines.append(head + (wrapped[0] if wrapped else ""))
            lines += [" " * (2 + name_w + value_w) + w for w in wrapped[1:]]
        lines.append("")
    return "\n".join(lines)


def _default_text(value) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _draw_loss_curve(run_dir: Path) -> None:
    log = run_dir / "log.csv"
    if not log.is_file():
        return
    from sketchlab.render.png import plot_curves

    plot_curves(log, run_dir / "loss.png", series=["loss", "valid_loss"], title=run_dir.name)
    print(f"loss curve: {run_dir / 'loss.png'}")


# ---------------------------------------------------------------------------------------------
# sample
# ---------------------------------------------------------------------------------------------


def sample_paths(out: str) -> tuple[Path, Path]:
    """(samples .npz, picture) for `--out`: FILE.npz draws FILE.png beside it; FILE.png or
    FILE.svg is the picture and the samples go beside it as FILE.npz."""
    path = Path(out)
    ext = path.suffix.lower()
    if ext == ".npz":
        return path, path.with_suffix(".png")
    if ext in (".png", ".svg"):
        return path.with_suffix(".npz"), path
    raise ConfigError(f"--out {out}: give the samples' file, FILE.npz (a FILE.png picture is "
                      f"written beside it), or the picture, FILE.png or FILE.svg (the samples go "
                      f"beside it as FILE.npz)")


def cmd_sample(args) -> int:
    npz_path, picture = sample_paths(args.out)
    device = pick_device(args.device)
    run = runs.open_run(args.run, device=device, which=args.which)
    model = run.model
    if args.classifier:
        runs.calibrate_shortcut(run, args.classifier, sketches=args.calibration_sketches)
    refs = (runs.load_references(args.condition_on, run, log=print, data_dir=args.data_dir)
            if args.condition_on else None)
    if refs is not None and args.n is not None:
        if args.n < 1:
            raise ConfigError(f"--n {args.n}: need at least 1")
        refs = refs[np.arange(min(args.n, len(refs)))]
    n = None if refs is not None else (64 if args.n is None else args.n)
    overrides = option_overrides(args, model)
    if args.strength is not None:
        if not model.can_heal:
            raise ConfigError(f"--strength does not apply to a {model.name} model; models that heal: "
                              f"{', '.join(models_with('can_heal'))}")
        if refs is None:
            raise ConfigError("--strength sets how much the --condition-on sketches are corrupted "
                              "before they are redrawn: give --condition-on")
        if model.heal_option in overrides:
            raise ConfigError(f"give --strength or --{_flag(model.heal_option)}, not both")
        overrides[model.heal_option] = args.strength
    t0 = time.time()
    out = model.generate(n, references=refs, seed=args.seed, **overrides,
                         **runs.generate_kwargs(model, progress=True))
    dt = time.time() - t0
    raw = out.in_units(1.0)
    raw.save(npz_path)
    print(f"{len(raw)} sketches in {dt:.1f}s ({len(raw) / max(dt, 1e-9):.0f}/s) -> {npz_path}")
    shown = draw_samples(raw, picture, model, args.run, refs=refs, overrides=overrides,
                         seed=args.seed, source=args.condition_on)
    print(f"picture: {picture} ({shown} of {len(raw)} drawn"
          f"{', each under its input' if refs is not None else ''})")
    return 0


def _caption_settings(model, overrides: dict, seed: int) -> list[str]:
    """What a sample picture was drawn with: temperature (and the diffusion sampler), seed."""
    opts = model.make_options(**overrides)
    parts = []
    if getattr(opts, "sampler", None) is not None or hasattr(opts, "sampler"):
        sampler = getattr(opts, "sampler", None) or getattr(model.config, "sampler", None)
        if isinstance(sampler, str):
            parts.append(f"sampler {sampler}")
    temperature = opts.temperature
    if temperature is None:
        temperature = getattr(model.config, "temperature", None)
    if temperature is None and hasattr(opts, "sampler"):
        temperature = 1.0         # SketchKnitter: the noise scale
    if getattr(opts, "greedy", None):
        parts.append("greedy")
    elif temperature is not None:
        parts.append(f"temperature {temperature:g}")
    for key in ("category", "component", "unit", "prior"):
        if getattr(opts, key, None) is not None:
            parts.append(f"{key} {getattr(opts, key)}")
    parts.append(f"seed {seed}")
    return parts


def draw_samples(raw: Sketches, picture: Path, model, run: str, *, refs: Sketches | None = None,
                 overrides: dict | None = None, seed: int = 0, source: str | None = None,
                 limit: int = 64) -> int:
    """The picture of `sketchlab sample`: conditional samples each under its input (and, when
    the model corrupted the input first, the corrupted input in between); free samples with a
    caption saying what drew them. Returns how many sketches it shows."""
    from sketchlab.render import save_conditioned_grid, save_grid

    overrides = dict(overrides or {})
    n = min(limit, len(raw))
    shown = raw[np.arange(n)]
    settings = ", ".join(_caption_settings(model, overrides, seed))
    where = f"{model.name} {run}"
    if refs is None:
        cats = shown.category_names
        drew = (f"category {cats[0]}" if len(cats) == 1 else
                f"categories {', '.join(cats[:4])}{' ...' if len(cats) > 4 else ''}" if cats else "")
        caption = f"{where}: free samples ({settings}){'; ' + drew if drew else ''}"
        save_grid(shown, picture, caption=caption)
        return n
    inputs = refs[np.arange(n)]
    corrupted = None
    strength = None
    if model.can_heal:
        strength = overrides.get(model.heal_option)
        if strength is None:
            strength = getattr(model.make_options(**overrides), model.heal_option, 0.0)
        if strength:
            corrupted = model.corrupt(inputs, strength=float(strength), seed=seed).in_units(1.0)
    titles = [inputs.category_name(i) or "input" for i in range(n)]
    rows = "input (blue), corrupted at strength %g (orange), output" % strength if corrupted \
        is not None else "input (blue) above its output"
    caption = f"{where}, conditioned on {source or 'references'}: {rows}; {settings}"
    save_conditioned_grid(shown, picture, inputs.in_units(1.0), corrupted=corrupted,
                          input_titles=titles,
                          output_titles=["healed" if corrupted is not None else "output"] * n,
                          caption=caption)
    return n


# ---------------------------------------------------------------------------------------------
# model options -> flags
# ---------------------------------------------------------------------------------------------
# `sample`'s own arguments, which no model option may shadow.
_SAMPLE_ARGS = {"run", "out", "n", "condition_on", "strength", "classifier", "calibration_sketches",
                "seed", "which", "device", "quiet"}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def option_table() -> dict[str, dict]:
    """Every sampling option of every model: name -> {"field", "type", "help", "models"}."""
    table: dict[str, dict] = {}
    for model_name, cls in model_classes().items():
        hints = typing.get_type_hints(cls.Options)
        for f in dataclasses.fields(cls.Options):
            entry = table.setdefault(f.name, {"field": f, "type": hints[f.name], "help": [],
                                              "models": []})
            text = f.metadata.get("help", "")
            if text and text not in entry["help"]:
                entry["help"].append(text)
            entry["models"].append(model_name)
    clash = _SAMPLE_ARGS & set(table)
    if clash:
        raise RuntimeError(f"model options {sorted(clash)} shadow `sketchlab sample` arguments")
    return table


def _arms(annotation) -> list:
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return [a for a in (typing.get_args(annotation) if union else (annotation,)) if a is not type(None)]


def _flag_kwargs(annotation) -> dict:
    """argparse arguments for an option's type: on/off for a bool, else a converter that tries
    the annotation's int, float, bool, str arms in order and its Literal choices. Arms that a
    command line cannot spell (a Sampler object, a list) are left to the Python API."""
    arms = _arms(annotation)
    literals = [v for a in arms if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
    plain = [a for a in arms if a in (bool, int, float, str)]
    if plain == [bool] and not literals:
        return {"action": argparse.BooleanOptionalAction}

    def convert(text: str):
        for t in plain:
            if t is bool and text.lower() in ("true", "false", "yes", "no", "1", "0"):
                return text.lower() in ("true", "yes", "1")
            if t in (int, float):
                try:
                    return t(text)
                except ValueError:
                    continue
            if t is str:
                return text
        if text in literals:
            return text
        raise argparse.ArgumentTypeError(f"invalid value {text!r}")

    convert.__name__ = "/".join([t.__name__ for t in plain] + (["choice"] if literals else []))
    kw: dict = {"type": convert}
    if literals and not plain:
        kw["choices"] = literals
    return kw


def add_option_flags(group) -> None:
    """One flag per sampling option of any model (`--batch-size` for `batch_size`), help from
    the fields' metadata and the models that take it."""
    all_models = set(model_classes())
    for name, entry in option_table().items():
        text = _merge_help(entry["help"])
        if set(entry["models"]) != all_models:
            text += f" [{', '.join(entry['models'])}]"
        group.add_argument(f"--{_flag(name)}", dest=name, default=None, help=text,
                           **_flag_kwargs(entry["type"]))


def _merge_help(texts: list[str]) -> str:
    """One help text from the models' texts of an option: a text that extends another (a
    model's note added inside the shared parenthesis) replaces it; different ones are joined."""
    kept: list[str] = []
    for t in texts:
        for i, k in enumerate(kept):
            if t.startswith(k.rstrip(")")):
                kept[i] = t
                break
            if k.startswith(t.rstrip(")")):
                break
        else:
            kept.append(t)
    return "; ".join(kept)


def option_overrides(args, model) -> dict:
    """The option flags given, as `generate` keywords; a flag this model's Options lacks is
    refused with the models that take it."""
    own = {f.name for f in dataclasses.fields(model.Options)}
    out = {}
    for name, entry in option_table().items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if name not in own:
            raise ConfigError(f"--{_flag(name)} does not apply to a {model.name} model; it is an "
                              f"option of {', '.join(entry['models'])}")
        out[name] = value
    return out


def _strength_help() -> str:
    parts = [f"{name}: {cls.heal_option}" for name, cls in model_classes().items() if cls.can_heal]
    return ("how much to corrupt or noise the --condition-on sketches before redrawing them (papers: "
            "0.1, 0.3); it sets each healing model's own option: " + ", ".join(parts))
