"""What every sketchlab model shares: the data hooks the trainer calls, the model interface, and
the registry of models.

A model is an `nn.Module` with a `Config` dataclass (the paper's defaults, inheriting the training
fields of `sketchlab.config.TrainingConfig`) and these methods:

* `make_batch(sketches, train, rng) -> dict[str, Tensor]`: collate normalised stroke-3 sketches
  (CPU tensors; the trainer moves them), applying the training augmentations when `train`;
* `loss(batch, step) -> dict[str, Tensor]` with `"loss"` the scalar to minimise;
* `on_step_end(step)`: called after the optimiser step (write non-gradient buffers here);
* `encode(batch) -> Tensor` (codes; SketchKnitter: denoiser features for retrieval, which do
  not decode) and `decode_codes(z, *, temperature, seed, greedy) -> Sketches`;
* `generate(n=None, *, references=None, seed=0, options=None, **option_overrides) -> Sketches`:
  `n` new sketches, or one per reference; `heal(references, *, strength, ...)` and
  `complete(prefix, n_per_prefix=1, *, seed=0, options=None, ...)` where declared. Sketches go
  in and come out in the model's normalised units.

Data preparation hooks are classmethods because they run before the model exists: the trainer
filters the raw splits, computes the scale factor on the training split, normalises every split,
and lets the model adapt data-dependent settings (e.g. RPCL's max_seq_len = longest sketch). What
a trained model keeps of its data (the scale factor, the category names) it is given through
`set_data`, by the trainer (`setup_from_data`) and when a run is reopened.

What a model can do is declared, not probed: the capability flags below are class attributes
(an instance may narrow them: an unconditional sketch-rnn has no encoder), and the sampling
options are the fields of the model's `Options` dataclass (`sketchlab sample` builds its flags
from them). Asking a model for something it cannot do raises a `ConfigError` that names the
models that can.

Presets are named starting configurations (`presets(name)` -> {"paper": Config, "cpu": Config}):
"paper" is the original code as released, every departure switched back and float32 throughout;
"cpu" trains in under an hour on 2 CPU cores. Each model module defines `paper_config` and
`cpu_config`; `sketchlab train --preset` applies `--hparams` on top.

    model             sample encode heal complete components  heal_option
    sketch-rnn          x      x(1)        x                     -
    rpcl-pix2seq(h)     x      x           x        x            -
    sp-gra2seq                 x      x                          mask_prob
    sketchgloc                 x      x                          displacement
    sketchknitter       x             x                          noise_level
    (1) the conditional model only
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch
from torch import nn

from sketchlab.data import strokes as S
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError, DataError

# ---- the registry ----------------------------------------------------------------------------
# Command-line name -> "module:Class". Imported on first use, so asking for one model does not
# load the others (and a build without one of them still runs the rest).
MODELS: dict[str, str] = {
    "sketch-rnn": "sketchlab.models.sketch_rnn:SketchRNN",
    "rpcl-pix2seq": "sketchlab.models.rpcl_pix2seq:RPCLPix2Seq",
    "rpcl-pix2seqh": "sketchlab.models.rpcl_pix2seqh:RPCLPix2SeqH",
    "sp-gra2seq": "sketchlab.models.sp_gra2seq:SPGra2Seq",
    "sketchgloc": "sketchlab.models.sketchgloc:SketchGloc",
    "sketchknitter": "sketchlab.models.sketchknitter:SketchKnitter",
    "sketch-a-net": "sketchlab.models.sketch_a_net:SketchANet",   # the evaluation's judge
}

# The capability flags every model declares (see the table above).
CAPABILITIES = ("can_sample", "can_encode", "can_heal", "can_complete", "has_components")


def available() -> list[str]:
    """Names whose module is present in this installation."""
    return [name for name, target in MODELS.items()
            if importlib.util.find_spec(target.split(":")[0]) is not None]


def get_model_class(name: str) -> type["SketchModel"]:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    module, cls = MODELS[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise ConfigError(f"model {name!r} is not implemented in this version of sketchlab; "
                              f"available: {', '.join(available())}") from e
        raise
    return getattr(mod, cls)


def model_classes() -> dict[str, type["SketchModel"]]:
    """Every available model class by name (imports them all)."""
    return {name: get_model_class(name) for name in available()}


def models_with(capability: str) -> list[str]:
    """The models whose class declares `capability` (one of CAPABILITIES)."""
    if capability not in CAPABILITIES:
        raise ConfigError(f"unknown capability {capability!r}; one of {', '.join(CAPABILITIES)}")
    return [name for name, cls in model_classes().items() if getattr(cls, capability)]


def models_with_option(option: str) -> list[str]:
    """The models whose `Options` has a field `option`."""
    return [name for name, cls in model_classes().items()
            if option in {f.name for f in dataclasses.fields(cls.Options)}]


# ---- presets -----------------------------------------------------------------------------------
# Named starting configurations, `sketchlab train MODEL --preset NAME` (`--hparams` then apply on
# top). Each model module defines one function per preset, `paper_config(**overrides)` and
# `cpu_config(**overrides)`, and `PAPER_CATEGORIES`, the category list its original trains on.
PRESETS: dict[str, str] = {
    "paper": "the original code as released: the paper's sizes, data settings and every quirk "
             "the original has (each one listed in the model's docstring), float32 throughout "
             "(no bf16 autocast in training, validation or sampling)",
    "cpu": "a small configuration that trains in under an hour on 2 CPU cores (no recurrent "
           "dropout, so torch's native LSTM kernel runs)",
}


def preset(model_name: str, name: str, **overrides):
    """The `Config` of preset `name` ("paper" or "cpu") of model `model_name`, with `overrides`."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    module = importlib.import_module(get_model_class(model_name).__module__)
    return getattr(module, f"{name}_config")(**overrides)


def presets(model_name: str) -> dict[str, Any]:
    """Every preset of `model_name`: {"paper": Config, "cpu": Config}."""
    return {name: preset(model_name, name) for name in PRESETS}


def paper_categories(model_name: str) -> tuple[str, ...]:
    """The categories the original code trains on by default (its own category list)."""
    module = importlib.import_module(get_model_class(model_name).__module__)
    return tuple(getattr(module, "PAPER_CATEGORIES", ()))


# ---- sampling options ------------------------------------------------------------------------
@dataclass
class SampleOptions:
    """The sampling options every model takes; a model's `Options` subclasses this and adds its
    own. `None` means the model's configured default. Each field's `metadata["help"]` is the
    help text of its `sketchlab sample` flag (`--batch-size` for `batch_size`)."""

    temperature: float | None = field(default=None, metadata={
        "help": "sampling temperature (default: the model's configured one)"})
    batch_size: int = field(default=500, metadata={"help": "how many sketches are drawn at once"})


def _literal_choices(annotation) -> tuple | None:
    """The allowed strings of an annotation whose only string arms are Literal[...] (else None)."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    arms = typing.get_args(annotation) if union else (annotation,)
    literals = [v for a in arms if typing.get_origin(a) is Literal for v in typing.get_args(a)]
    if not literals or str in arms:
        return None
    return tuple(literals)


def check_options(options) -> None:
    """Refuse an option value outside its declared choices, or a batch size < 1."""
    hints = typing.get_type_hints(type(options))
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        choices = _literal_choices(hints.get(f.name))
        if isinstance(value, str) and choices is not None and value not in choices:
            raise ConfigError(f"{f.name}={value!r}: choose one of {', '.join(map(str, choices))}")
        if isinstance(value, float) and not math.isfinite(value):   # e.g. --temperature nan
            raise ConfigError(f"{f.name}={value}: must be a finite number")
    bs = options.batch_size
    if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {bs}")


class SketchModel(nn.Module):
    name: ClassVar[str] = "base"
    Config: ClassVar[type]
    Options: ClassVar[type] = SampleOptions

    # ---- capabilities (declared; see the module docstring) -----------------------------------
    can_sample: ClassVar[bool] = False     # draws new sketches without references
    can_encode: ClassVar[bool] = False     # latent codes: reconstruct, interpolate, latent maps
    can_heal: ClassVar[bool] = False       # corrupts references, then redraws them (`heal`)
    can_complete: ClassVar[bool] = False   # continues a partial drawing (`complete`)
    has_components: ClassVar[bool] = False  # a latent mixture prior (components, centres)
    # The `Options` field that `heal(strength=...)` and `sketchlab sample --strength` set.
    heal_option: ClassVar[str | None] = None

    def __init__(self, config):
        super().__init__()
        self.config = config
        # Offsets the model sees are raw offsets / scale_factor; set from the run's training split
        # (a model may keep it in a buffer behind a `scale_factor` property instead).
        if not isinstance(getattr(type(self), "scale_factor", None), property):
            self.scale_factor = 1.0
        self.categories: tuple[str, ...] = ()

    # ---- pretrained exports ------------------------------------------------------------------
    @classmethod
    def shipped_state(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The part of a trained state dict that a pretrained export ships (default: all of it);
        `complete_state` restores the rest on load."""
        return state

    @classmethod
    def complete_state(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A loaded state dict made whole again after `shipped_state` left parts out."""
        return state

    # ---- data preparation (before the model exists) -----------------------------------------
    @classmethod
    def filter_sketches(cls, config, sketches: Sketches) -> Sketches:
        """Clip raw offsets to +-1000 and drop sketches longer than `config.max_seq_len` (if > 0;
        a warning says how many)."""
        return clip_and_limit(sketches, int(getattr(config, "max_seq_len", 0) or 0))

    @classmethod
    def compute_scale_factor(cls, config, train: Sketches) -> float:
        """The seeds' normaliser: population std of the training split's dx and dy pooled."""
        return S.scale_factor(train)

    @classmethod
    def adapt_config(cls, config, splits: dict[str, Sketches]):
        """Return `config` with data-dependent fields filled in (default: unchanged)."""
        return config

    def default_checkpoint(self) -> str:
        """Which weights of a run directory this model samples from unless told otherwise:
        "best" (lowest validation loss) or "latest" (the final weights)."""
        return "best"

    def set_data(self, scale_factor: float, categories: Sequence[str] = ()) -> None:
        """What the model keeps of its training data: the offset scale factor (raw units per
        model unit) and the category names it was trained on (samples of a one-category model
        carry that category)."""
        self.scale_factor = float(scale_factor)
        self.categories = tuple(str(c) for c in categories)

    def setup_from_data(self, data) -> None:
        """Take what the model keeps of its training data (`trainer.PreparedData`) before training."""
        self.set_data(data.scale_factor, data.categories)

    # ---- the training interface ----------------------------------------------------------------
    def make_batch(self, sketches: list[np.ndarray], train: bool,
                   rng: np.random.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        # DDP wraps `forward`, so the loss is the forward pass.
        return self.loss(batch, step)

    def on_step_end(self, step: int) -> None:
        """Called by the trainer after each optimiser step."""

    def prepare_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Device-side preparation of a training batch that must run eagerly before the step
        (e.g. rasterising images: dynamic shapes cannot be captured in a CUDA graph)."""
        return batch

    def graph_key(self, step: int):
        """Which captured CUDA graph step `step` can replay, or None to run it eagerly.

        A model opts in by returning a key naming the step's Python control flow (e.g. "em" or
        "rpcl"), after making `loss`/`on_step_end` free of host syncs and reading step-dependent
        values from `batch["step"]` (see sketchlab.train.graphed).
        """
        return None

    # ---- capabilities --------------------------------------------------------------------------
    def require(self, capability: str, what: str) -> None:
        """Raise a ConfigError naming the models that can, unless this one declares `capability`."""
        if capability not in CAPABILITIES:
            raise ConfigError(f"unknown capability {capability!r}")
        if not getattr(self, capability):
            raise ConfigError(f"a {self.name} model cannot {what}; models that can: "
                              f"{', '.join(models_with(capability))}")

    def require_references(self, references: Sketches | None) -> None:
        """A model without a prior generates only from references."""
        if references is None and not self.can_sample:
            raise ConfigError(f"{self.name} has no prior to sample from: condition it on reference "
                              f"sketches (`sketchlab sample RUN --condition-on test|FILE`); models "
                              f"that sample freely: {', '.join(models_with('can_sample'))}")

    # ---- encoding --------------------------------------------------------------------------------
    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} has no encoder")

    @torch.no_grad()
    def encode_sketches(self, sketches: Sketches, batch_size: int = 500) -> torch.Tensor:
        """The code (`encode`: mu for the VAEs) of each normalised sketch: `(N, D)` float32 on the
        model's device, in the order given; evaluation mode, no augmentation."""
        if len(sketches) == 0:
            raise DataError("no sketch to encode")
        was_training = self.training
        self.eval()
        rng = np.random.default_rng(0)
        codes = []
        try:
            for lo in range(0, len(sketches), batch_size):
                items = [sketches[i] for i in range(lo, min(lo + batch_size, len(sketches)))]
                batch = {k: v.to(self.device) for k, v in self.make_batch(items, False, rng).items()}
                codes.append(self.encode(batch).float())
        finally:
            self.train(was_training)
        return torch.cat(codes, 0)

    def retrieval_queries(self, sketches: Sketches) -> Sketches:
        """The generated sketches as the original's retrieval script reads them back before
        re-encoding them for Ret (default: unchanged)."""
        return sketches

    @torch.no_grad()
    def encode_queries(self, sketches: Sketches, batch_size: int = 500) -> torch.Tensor:
        """The codes of generated sketches re-encoded as Ret queries (`retrieval_queries`, then
        `encode_sketches`)."""
        return self.encode_sketches(self.retrieval_queries(sketches), batch_size)

    def decode_codes(self, z: torch.Tensor, *, temperature: float | None = None, seed: int = 0,
                     greedy: bool = False) -> Sketches:
        """Decode latent codes `(N, z_size)` into normalised sketches (`can_encode` models)."""
        self.require("can_encode", "decode latent codes")
        raise NotImplementedError

    def latent_labels(self, z: torch.Tensor) -> dict[str, np.ndarray]:
        """Named discrete labels of codes for latent maps (e.g. {"component": ...}); none by default."""
        return {}

    # ---- the latent mixture prior (`has_components` models) -----------------------------------
    def latent_centres(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prior's Gaussian means (K, D) and weights (K,), drawn on latent maps."""
        self.require("has_components", "show latent mixture components")
        raise NotImplementedError

    def prior_weights(self) -> torch.Tensor:
        """The prior weight of each Gaussian (K,)."""
        self.require("has_components", "weigh latent mixture components")
        raise NotImplementedError

    def n_alive(self) -> int:
        """How many prior components still carry weight."""
        self.require("has_components", "count latent mixture components")
        raise NotImplementedError

    # ---- sampling ------------------------------------------------------------------------------
    def make_options(self, options=None, **overrides):
        """This model's `Options`: `options` (or the defaults) with `overrides` applied. An
        option this model does not take is refused, naming the models that take it."""
        cls = type(self).Options
        if options is None:
            options = cls()
        elif not isinstance(options, cls):
            raise ConfigError(f"options: a {self.name} model takes {cls.__module__}.{cls.__qualname__}, "
                              f"got {type(options).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in overrides:
            if key not in known:
                owners = [m for m in models_with_option(key) if m != self.name]
                hint = f"; it is an option of {', '.join(owners)}" if owners else ""
                if key == "strength" and self.can_heal:
                    hint = (f"; healing strength is {self.heal_option} here: heal(references, "
                            f"strength=...) sets it")
                raise ConfigError(f"a {self.name} model takes no sampling option {key!r} (its "
                                  f"options: {', '.join(sorted(known))}){hint}")
        options = dataclasses.replace(options, **overrides)
        check_options(options)
        return options

    def generate(self, n: int | None = None, *, references: Sketches | None = None, seed: int = 0,
                 options=None, **overrides) -> Sketches:
        """`n` new sketches (`can_sample`), or one per reference sketch (normalised units): redrawn
        from its code, or refined (SketchKnitter). Options: `options` (this model's `Options`)
        and/or its fields as keywords. Returns normalised sketches."""
        raise NotImplementedError

    def heal(self, references: Sketches, *, strength: float, seed: int = 0, options=None,
             **overrides) -> Sketches:
        """Corrupt each reference by `strength` (the option named by `heal_option`), then redraw
        it (`can_heal` models): `generate(references=..., **{heal_option: strength})`."""
        self.require("can_heal", "heal sketches")
        if self.heal_option in overrides:
            raise ConfigError(f"give strength or {self.heal_option}, not both (heal's strength is "
                              f"{self.name}'s {self.heal_option})")
        overrides[self.heal_option] = float(strength)
        return self.generate(references=references, seed=seed, options=options, **overrides)

    def complete(self, prefix: Sketches, n_per_prefix: int = 1, *, seed: int = 0, options=None,
                 **overrides) -> Sketches:
        """Continue each partial drawing of `prefix` `n_per_prefix` times (`can_complete` models);
        each result starts with its prefix."""
        self.require("can_complete", "complete partial drawings")
        raise NotImplementedError

    def label_samples(self, result: Sketches, references: Sketches | None) -> Sketches:
        """Give samples the category they are known to have: their reference's, or the model's
        only category. Free samples of a model of several categories carry those categories
        (`category_names`, no `category`: they were drawn from them; the evaluation scores them
        as unconditional samples)."""
        if references is not None:
            return result.with_categories_of(references)
        if len(self.categories) == 1:
            result.category = np.zeros(len(result), np.int64)
            result.category_names = self.categories
        elif self.categories and result.category is None:
            result.category_names = self.categories
        return result

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")


def clip_and_limit(sketches: Sketches, max_len: int, limit_name: str = "max_seq_len") -> Sketches:
    """The seeds' raw-data filter: drop empty sketches and those longer than `max_len` (when
    > 0; a warning says how many, naming the setting `limit_name`), clip offsets to +-1000."""
    keep = [i for i, n in enumerate(sketches.lengths) if n > 0 and (max_len <= 0 or n <= max_len)]
    if max_len > 0:
        too_long = int((sketches.lengths > max_len).sum())
        if too_long:
            warnings.warn(f"{too_long} of {len(sketches)} sketches are longer than {limit_name}="
                          f"{max_len} points and are left out", stacklevel=3)
    out = sketches.select(keep) if len(keep) != len(sketches) else sketches
    pts = out.points.copy()
    pts[:, :2] = np.clip(pts[:, :2], -S.RAW_OFFSET_LIMIT, S.RAW_OFFSET_LIMIT)
    return Sketches(pts, out.offsets, category=out.category, category_names=out.category_names,
                    z=out.z, component=out.component, scale_factor=out.scale_factor)


__all__ = ["CAPABILITIES", "MODELS", "PRESETS", "SampleOptions", "SketchModel", "available",
           "check_options", "clip_and_limit", "get_model_class", "model_classes", "models_with",
           "models_with_option", "paper_categories", "preset", "presets"]
