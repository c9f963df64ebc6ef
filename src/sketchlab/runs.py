"""Run directories: find one, rebuild its model, and read the sketches it was trained on.

A run directory is what `sketchlab train` writes (`config.json`, weights in safetensors; see
`sketchlab.train.checkpoint` for the files). This module is the one place that turns a path into a
ready model: it reads the config, looks the model class up in the registry, loads the weights
(`best` if present, else the latest) and gives the model its data scale factor and categories.
"""

from __future__ import annotations

import inspect
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from sketchlab.config import from_dict
from sketchlab.data.sources import load_splits, load_sketch_file
from sketchlab.data.sketches import Sketches
from sketchlab.errors import CheckpointError, ConfigError, DataError
from sketchlab.eval.evaluate import RunHooks
from sketchlab.eval.judge import SketchANetFeatures
from sketchlab.models import get_model_class
from sketchlab.models.knitter_shortcut import calibrate_shortcut as calibrate_shortcut_curve
from sketchlab.models.knitter_shortcut import classifier_score_fn, require_knitter
from sketchlab.nn.device import pick_device
from sketchlab.train import checkpoint as ckpt
from sketchlab import zoo

SPLIT_NAMES = ("test", "valid", "train")
JUDGE_MODEL = "sketch-a-net"     # the evaluation's judge (sketchlab.models.sketch_a_net)


@dataclass
class Run:
    """A trained run: where it lives, its config.json and its model (in eval mode)."""

    path: Path
    info: dict[str, Any]
    model: Any

    @property
    def model_name(self) -> str:
        return self.info["model"]

    @property
    def categories(self) -> list[str]:
        return list(self.info.get("categories") or [])


def resolve(path_or_name: str | Path) -> Path:
    """The run directory a user means: an existing local path wins; `zoo:NAME` or a bare NAME of
    the pretrained zoo gives that entry (its weights checked against its card first)."""
    text = str(path_or_name)
    if text.startswith(zoo.PREFIX):
        return zoo.verify(text)
    path = Path(path_or_name)
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path}: a file, not a run directory (made by `sketchlab train`)")
        return path
    if "/" in text or os.sep in text or text.startswith("."):
        raise CheckpointError(f"{path}: no such run directory")
    if text in zoo.names():
        return zoo.verify(text)
    raise zoo.unknown_name_error(text)


def export_to_zoo(run_dir: str | Path, name: str, card: dict[str, Any], **kw) -> Path:
    """`zoo.export_run` shipping only what the run's model needs (`SketchModel.shipped_state`):
    `sketchlab zoo add` and tools/zoo_build.py."""
    model_name = _run_info(Path(run_dir), None)["model"]
    return zoo.export_run(run_dir, name, card, shipped=get_model_class(model_name).shipped_state,
                          **kw)


def open_run(run_dir: str | Path, device: str | torch.device = "cpu", which: str | None = None,
             expect_model: str | None = None) -> Run:
    """Rebuild the model of a run directory or pretrained name (see `resolve`) and load its
    weights: `which="best"` (best if present, else the latest), "latest", or None for the
    model's own choice (`default_checkpoint`: best, but SketchKnitter's faithful mode samples
    the final weights as the original does)."""
    run_dir = resolve(run_dir)
    info = _run_info(run_dir, expect_model)
    cls = get_model_class(info["model"])
    config = from_dict(cls.Config, info["config"], where=str(run_dir / "config.json"))
    model = cls(config)
    model.set_data(float(info.get("scale_factor", 1.0)), info.get("categories") or ())
    files = {"best": ["best.safetensors", "model.safetensors"], "latest": ["model.safetensors"]}
    if which is None:
        which = model.default_checkpoint()
    if which not in files:
        raise CheckpointError(f"which={which!r}: choose 'best' or 'latest'")
    for name in files[which]:
        if (run_dir / name).is_file():
            ckpt.load_weights(run_dir / name, model, info["model"])
            break
    else:
        raise CheckpointError(f"{run_dir}: no weights yet (model.safetensors); has training started?")
    return Run(run_dir, info, model.to(device).eval())


def _run_info(run_dir: Path, expect_model: str | None) -> dict[str, Any]:
    """config.json of a run; a judge written by an earlier sketchlab is read as a sketch-a-net run."""
    raw = ckpt.read_config_json(run_dir)
    if raw.get("kind") == "classifier" and raw.get("model") == JUDGE_MODEL and "classifier" in raw:
        if expect_model not in (None, JUDGE_MODEL):
            raise CheckpointError(f"{run_dir / 'config.json'}: this run holds a {JUDGE_MODEL!r} "
                                  f"model, not {expect_model!r}")
        return _legacy_judge_info(raw, run_dir)
    return ckpt.read_run_config(run_dir, expect_model)


def load_model(run_dir: str | Path, device: str | torch.device = "cpu", which: str | None = None,
               expect_model: str | None = None):
    """The model of a run directory, ready to sample (see `open_run`)."""
    return open_run(run_dir, device, which, expect_model).model


def run_split(run: Run, split: str, data_dir: str | Path | None = None) -> Sketches:
    """One split (train, valid or test) of the data a run was trained on, in raw units, read
    from the run's data folder or from `data_dir` (where it lives now: a pretrained entry
    records none)."""
    info = run.info
    data_dir = data_dir if data_dir is not None else info.get("data_dir")
    if data_dir is None and zoo.is_inside_zoo(run.path):
        raise DataError(f"{run.path.name} is a pretrained model: give its data folder with "
                        f"--data-dir (its card says how to import it: `sketchlab zoo info "
                        f"{run.path.name}`)")
    raw = load_splits(data_dir, run.categories or None,
                      limit_per_category=info.get("limit_per_category"),
                      seed=run.model.config.seed)
    return raw[split]


def reference_limit(model) -> str:
    """What a model takes as a reference sketch, in words (for the reports of skipped ones)."""
    c = model.config
    most = int(getattr(c, "num_points", 0) or 0) or int(getattr(c, "max_seq_len", 0) or 0)
    field = "num_points" if getattr(c, "num_points", 0) else "max_seq_len"
    if most > 0:
        return f"{model.name} takes sketches of 1 to {most} points ({field})"
    return f"{model.name} takes sketches of at least 1 point"


def usable_references(model, sketches: Sketches) -> np.ndarray:
    """Which of `sketches` (any units) the model can take as references: a boolean mask, by the
    same rule its training data went through (`filter_sketches`: no empty sketch, none longer
    than max_seq_len or SketchKnitter's num_points)."""
    # The filter selects sketches and keeps their per-sketch fields: let it carry each
    # sketch's position through, so the rule stays the model's own.
    tagged = Sketches(sketches.points, sketches.offsets, component=np.arange(len(sketches)),
                      scale_factor=sketches.scale_factor)
    with warnings.catch_warnings():
        # The filter warns about what it leaves out; the callers report it themselves.
        warnings.simplefilter("ignore")
        kept = type(model).filter_sketches(model.config, tagged.in_units(1.0))
    mask = np.zeros(len(sketches), bool)
    if len(kept):
        mask[kept.component] = True
    return mask


def take_usable(model, sketches: Sketches, what: str, log=None) -> Sketches:
    """The sketches the model can take (see `usable_references`); how many were left out, and
    why, goes to `log` (e.g. print). Offsets are clipped as in training. None usable: an error."""
    ok = usable_references(model, sketches)
    if not ok.all():
        n_bad = int((~ok).sum())
        if not ok.any():
            raise DataError(f"{what}: none of the {len(sketches)} sketches is usable "
                            f"({reference_limit(model)})")
        if log is not None:
            log(f"note: {what}: {n_bad} of {len(sketches)} sketches left out "
                f"({reference_limit(model)})")
        sketches = sketches.select(np.nonzero(ok)[0])
    return type(model).filter_sketches(model.config, sketches.in_units(1.0))


def load_references(spec: str, run: Run, flag: str = "--condition-on", log=None,
                    data_dir: str | Path | None = None) -> Sketches:
    """Reference sketches in the model's normalised units: a split of the run's data (`test`,
    `valid`, `train`; from `data_dir` when given) or a sketch file; sketches the model cannot
    take are left out, and `log` (e.g. print) is told how many."""
    model = run.model
    if spec in SPLIT_NAMES:
        sk = run_split(run, spec, data_dir)
    else:
        path = Path(spec)
        if path.is_dir():
            raise DataError(f"{flag} {spec}: is a folder; give a .npz file of sketches")
        if not path.is_file():
            raise DataError(f"{flag} {spec}: not a split name ({', '.join(SPLIT_NAMES)}) and no "
                            f"such file")
        sk = load_sketch_file(path)
    sk = take_usable(model, sk, f"{flag} {spec}", log)
    return sk.in_units(model.scale_factor)


def is_conditional(model) -> bool:
    """Whether the model draws from reference sketches (else it only samples freely)."""
    return bool(model.can_encode or model.can_heal)


def generate_kwargs(model, progress: bool) -> dict:
    """Run-time keywords of this model's `generate` beyond its options: `progress` where it
    reports its own (SketchKnitter's diffusion steps)."""
    params = inspect.signature(model.generate).parameters
    return {"progress": progress} if progress and "progress" in params else {}


def model_run_hooks(run_dir: Path, device=None, temperature: float | None = None,
                    batch_size: int = 100, seed: int = 0, progress: bool = False) -> RunHooks:
    """RunHooks for a sketchlab model run: generation conditioned on each reference (models
    with an encoder or healing), or as many free samples (an unconditional sketch-rnn), and
    `encode` where the model has an encoder.

    `temperature` None samples each model at its own configured temperature (the original's).
    References arrive in raw data units; the model works in units of its training scale factor.
    `encode` re-encodes generated sketches as Ret queries (`encode_queries`: as the original's
    retrieval script reads them back, e.g. SketchGloc's `ret_query_shift`).
    """
    run = open_run(run_dir, device=device or "cpu")
    model = run.model
    scale = float(model.scale_factor)
    conditional = is_conditional(model)
    extra = generate_kwargs(model, progress)
    options = {} if temperature is None else {"temperature": temperature}

    def encode(sketches: Sketches) -> np.ndarray:
        return model.encode_queries(sketches.in_units(scale), batch_size).cpu().numpy()

    def sample(reference: Sketches) -> Sketches:
        if conditional:
            out = model.generate(references=reference.in_units(scale), seed=seed, **options,
                                 **extra)
        else:
            out = model.generate(len(reference), seed=seed, **options, **extra)
        return out.in_units(1.0)

    def usable(reference: Sketches) -> np.ndarray:
        return usable_references(model, reference)

    return RunHooks(Path(run_dir).name, sample, encode if model.can_encode else None,
                    categories=run.categories, conditional=conditional, usable=usable,
                    limit=reference_limit(model))


# ------------------------------------------------------------------------------------------------
# Judges
# ------------------------------------------------------------------------------------------------


def load_judge(run_dir: str | Path, device: str | torch.device | None = None,
               batch_size: int = 256, which: str = "best") -> SketchANetFeatures:
    """A Sketch-a-Net run (`sketchlab classifier train`, or `sketchlab train sketch-a-net`) as the
    judge of `sketchlab.eval`: Rec/IS logits and FID/P-R/GS features of raw or normalised sketches
    (rendering fits every sketch to its box). `device` None picks the best available one.

        judge = load_judge("runs/clf")
        features, logits = judge.extract(sketches)      # (N, 512), (N, categories)
        judge.accuracy(test_sketches)                    # needs their categories
    """
    run_dir = Path(run_dir)
    try:
        run = open_run(run_dir, pick_device(device), which, expect_model=JUDGE_MODEL)
    except CheckpointError as e:
        raise CheckpointError(f"{e} (a judge is the run directory that `sketchlab classifier "
                              f"train` writes)") from e
    model = run.model
    if len(model.categories) != model.config.num_classes:
        raise CheckpointError(f"{run_dir / 'config.json'}: {len(model.categories)} categories "
                              f"for a network of {model.config.num_classes} outputs")
    model.categories = tuple(model.categories)
    return SketchANetFeatures(model, batch_size=batch_size, run_dir=run_dir)


def _legacy_judge_info(raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Judges written before Sketch-a-Net became a trainable model kept their own config.json
    ("kind": "classifier", fields under "classifier" and "train") and the best weights in
    model.safetensors under the same names as now: read them as a full-width sketch-a-net run."""
    try:
        clf, train = dict(raw["classifier"]), dict(raw.get("train") or {})
        categories = [str(c) for c in clf.pop("categories")]
        scale = float(clf.pop("scale_factor", 1.0))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{run_dir / 'config.json'}: bad classifier config ({e})") from e
    config = dict(clf, num_classes=len(categories))
    renamed = {"lr": "learning_rate"}
    for k in ("batch_size", "lr", "weight_decay", "stretch", "drop_prob", "flip", "seed"):
        if k in train:
            config[renamed.get(k, k)] = train[k]
    return {"model": JUDGE_MODEL, "kind": "model", "categories": categories,
            "scale_factor": scale, "config": config}


# How many sampling trajectories the r-Shortcut calibration walks by default: its predictor
# learns from CALIBRATION_SKETCHES, and the mean curve is read off half as many.
CALIBRATION_SKETCHES = 512


def calibrate_shortcut(run: Run, classifier_dir: str | Path, log=print,
                       sketches: int = CALIBRATION_SKETCHES, progress: bool = True) -> None:
    """SketchKnitter's r-Shortcut: train the recognizability predictor on a judge's scores along
    `sketches` sampling trajectories (the mean curve comes from half as many), and store the
    curve in the run's weights (atomically, into the file `open_run` loads: best, else latest,
    keeping its step). Fewer sketches calibrate faster and noisier (each is a full sampling
    chain of the model's diffusion_steps)."""
    model = run.model
    require_knitter(model)
    if sketches < 2:
        raise ConfigError(f"--calibration-sketches {sketches}: need at least 2")
    clf = load_judge(classifier_dir, model.device)
    score = classifier_score_fn(clf, run.categories or clf.categories)
    t0 = time.time()
    pilot = max(1, sketches // 2)
    steps = model.diffusion.num_timesteps
    log(f"calibrating the r-Shortcut from the classifier's recognizability scores: "
        f"{sketches} + {pilot} sampling chains of {steps} steps, then the recognizer's epochs "
        f"(--calibration-sketches sets how many chains) ...")
    _, _, info = calibrate_shortcut_curve(model, score, device=model.device, progress=progress,
                                          n_sketches=sketches, pilot=pilot)
    log(f"calibrated in {time.time() - t0:.0f}s (recognizer BCE {info['bce'][-1]:.3f}); saved into "
        f"{run.path}")
    name = "best.safetensors" if (run.path / "best.safetensors").is_file() else "model.safetensors"
    with safe_open(str(run.path / name), framework="pt") as f:
        meta = dict(f.metadata() or {})
    ckpt.save_weights(run.path / name, model, {**meta, "shortcut": "calibrated"})


__all__ = ["CALIBRATION_SKETCHES", "Run", "calibrate_shortcut", "generate_kwargs",
           "is_conditional", "load_judge", "load_model", "load_references", "model_run_hooks",
           "open_run", "reference_limit", "resolve", "run_split", "take_usable",
           "usable_references"]
