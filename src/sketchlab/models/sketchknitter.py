"""SketchKnitter (Wang et al., ICLR 2023): denoising diffusion over stroke-3 points.

A sketch is up to N = 96 stroke-3 points. The offsets (dx, dy) are diffused with the linear
schedule (T = 1000) and a 1-D UNet predicts the noise (epsilon) plus pen-state logits from a
separate head; pen states are not diffused (wangqiang9/SketchKnitter `sketch_diffusion/unet.py`
`UNetModel`, `gaussian_diffusion.py` `GaussianDiffusion.training_losses`). Sampling: DDPM, DDIM,
and the recognizability-guided shortcut (r-Shortcut, see below); conditional refinement /
healing is SDEdit: noise a given sketch to an intermediate step and denoise it (our choice: the
original's guided sampler, `gaussian_diffusion_noise.py`, does not run as written).

Two modes (`Config.faithful`):

* ``faithful=True`` reproduces the original code (`train.py`, `sample.py`): sketches padded with
  (0, 0, 0) rows to 96 points, no mask, the loss covers the padding, the scale factor is the std
  of all three columns (`image_datasets.py` `SketchDataset.calculate_normalizing_scale_factor`
  takes the std of dx, dy and the pen bits together), x0_hat is clamped to [-1, 1]
  (`gaussian_diffusion.py` `p_mean_variance` with `clip_denoised=True`, although the offsets are
  not bounded by 1), every sample has 96 points, the pen is decoded as `sample.py`'s `bin_pen`
  does (it thresholds the RAW class-0 "pen stays down" logit, so lifted where that logit >=
  pen_break; 0.5 in `sample.py`, 0.1 in `sample.sh`), the EMA runs at 0.9999 from step 0 with no
  warm-up, and samples come from the final weights (the original samples the last checkpoint it
  wrote; it never validates).
* ``faithful=False`` (default, corrected): padding rows are masked out of the loss and held at
  exactly zero (never noised), the network is told which rows are real (a mask feature next to
  (dx, dy)), the sketch length is drawn from the training lengths at sampling time, the scale
  factor is the std of dx, dy only (as sketch-rnn), x0_hat is clamped only to the data's bound,
  the pen is lifted where P(lift) = softmax(logits)[..., 1] >= pen_break, the EMA warms up
  (d = min(rate, (1+n)/(10+n)), so minutes-long runs do not sample from nearly random weights),
  and samples come from the best checkpoint (lowest validation loss of the non-EMA weights).

Each of those has its own switch, whatever the mode: `pen_decoding` ("probability" |
"original"; also a sampling option), `ema_warmup`, `sample_from` ("best" | "latest";
`runs.open_run` and `sketchlab sample` follow it), `clip_x0`. Samples use the EMA weights (the
original's `sample.py` loads whichever `--model_path` it is given, raw or EMA; `TrainLoop.save`
writes both).

Sampling options (`Options`): the sampler and its steps, spacing, eta and clamp, the EMA weights,
the pen rule and threshold, the refinement noise level t0/T (`noise_level`, what
`heal(strength=...)` sets), and the fast path (low-precision shadow weights, CUDA graphs,
torch.compile). The fast path's weights are bf16 on CUDA when the config's `amp` is on (the
default), float32 otherwise (the original and `paper_config` are float32 throughout).

The r-Shortcut is sketchlab's reconstruction, not the released code: the original's
recognizability loop (`gaussian_diffusion_acc.py`) never trains its predictor `h_model` (it gets
no gradient: the loss is re-wrapped as a new leaf inside `no_grad`), and the paper's shortcut
function is not in the repository. Its predictor and calibration live in
`sketchlab.models.knitter_shortcut`.

Both modes use the original's points-as-channels UNet (20.33M parameters at the defaults), which
the speed comparison with the original needs anyway; `layout="sequence"` is an optional variant.

What differs from the original when `faithful=False`, beyond the list above: optional training
augmentation (off by default, as the original), validation every `eval_every` steps (the
original never validates), bf16 autocast in training on CUDA (`amp`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sketchlab.config import TrainingConfig
from sketchlab.data.sketches import Sketches
from sketchlab.data.strokes import (
    augment_strokes, random_scale, scale_factor as xy_scale_factor, validate_stroke3,
)
from sketchlab.errors import ConfigError, DataError
from sketchlab.models.base import SampleOptions, SketchModel, clip_and_limit
from sketchlab.nn.diffusion import (
    GaussianDiffusion, RecognizabilitySpacing, Sampler, StepCallback, StepRunner, bf16_shadow,
    make_sampler, reverse_loop, sync_shadow,
)
from sketchlab.nn.ema import EMA
from sketchlab.nn.unet1d import UNet1D

__all__ = ["Config", "Options", "PAPER_CATEGORIES", "PEN_DECODINGS", "config_from_original",
           "SketchKnitter", "cpu_config", "decode_pen", "faithful_scale_factor", "length_mask",
           "paper_config"]

# How pen states are read off the pen head's logits: "probability" lifts where
# softmax(logits)[..., 1] >= pen_break; "original" is `sample.py`'s `bin_pen`, which lifts
# where the raw class-0 ("pen stays down") logit >= pen_break: inverted, and not a probability.
PEN_DECODINGS = ("probability", "original")
CHECKPOINTS = ("best", "latest")


@dataclass
class Config(TrainingConfig):
    # --- data ---
    num_points: int = 96                # N: sketches with 0 < L <= N points are kept
    faithful: bool = False              # reproduce the original's data/loss/sampling quirks
    random_scale: float = 0.0           # training augmentation (none in the original): stretch
    augment_prob: float = 0.0           # dx, dy by U(1 +- s); sketch-rnn's point dropping
    # --- network (`script_util.py` `model_and_diffusion_defaults`, `create_model`) ---
    layout: str = "points"              # "points" (original: points are Conv1d channels) | "sequence"
    model_channels: int = 96            # must equal num_points in the points layout
    lift_dim: int = 128                 # Linear(2 -> 128) lifting of each point
    channel_mult: tuple[int, ...] = (1, 2, 3, 4) # UNet width multipliers per resolution level
    num_res_blocks: int = 2             # code default 2 (20.33M); the scripts say 3 (26.53M)
    num_heads: int = 4                   # attention heads
    dropout: float = 0.0                 # UNet dropout
    # Class-conditional (the original's `class_cond`, from improved-diffusion: a label embedding
    # added to the timestep embedding); num_classes is filled in from the data's categories.
    class_cond: bool = False             # class-conditional: sample by category
    num_classes: int = 0                 # categories (filled in from the data)
    # --- diffusion (`gaussian_diffusion.py` `get_named_beta_schedule`, `training_losses`) ---
    diffusion_steps: int = 1000          # T, the diffusion chain's length
    noise_schedule: str = "linear"       # beta schedule: linear | cosine
    pen_loss_weight: float = 0.01       # loss = mse(eps) + 0.01 * CE(pen)
    # --- sampling (`gaussian_diffusion.py` `p_sample`, `ddim_sample`; `sample.py`) ---
    sampler: str = "ddpm"               # "ddpm" | "ddim" | "rshortcut"
    sample_steps: int | str | None = None  # None: all T (ddpm, ddim), 30 (rshortcut); or "ddim30"
    spacing: str = "ddim"               # respacing of ddpm/ddim: ddim | even | linear | quadratic
    # x0_hat is clamped to [-clip, clip] at every reverse step. "auto": 1.0 when faithful (the
    # original's `clip_denoised` clamp, applied to unbounded data); else the training split's
    # largest |dx|, |dy| (filled in by `adapt_config`, so config.json records it), a bound no
    # real sketch exceeds. Without it, few-step DDIM (eta 0) on a young model overshoots: on a
    # CPU apple model DDIM-30 drew |offsets| 3.2x the data's, 1.7x with the data bound, while
    # DDPM was unchanged. None: no clamp.
    clip_x0: float | str | None = "auto"  # x0 clamp; "auto": the data's largest |dx|, |dy|
    pen_break: float = 0.5              # the threshold of the pen rule (sample.py 0.5, sample.sh 0.1)
    pen_decoding: str | None = None     # "probability" | "original"; None: original when faithful
    sample_from: str | None = None      # "best" | "latest" weights; None: latest when faithful
    use_ema: bool = True                 # sample with the EMA weights
    # --- optimisation (`train_util.py` `TrainLoop`): AdamW, constant lr 1e-4, no clipping ---
    learning_rate: float = 1e-4
    min_learning_rate: float = 0.0
    decay_rate: float = 1.0             # constant learning rate (lr_anneal_steps = 0)
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    batch_size: int = 4                 # the original's; use 128-256 on a GPU
    max_steps: int = 50001              # hard-coded in the original (`TrainLoop.run_loop`)
    grad_clip: float = 0.0
    clip_mode: str = "none"             # the original clips nothing
    valid_metric: str = "loss"
    eval_every: int = 1000              # the original never validates; we keep the best EMA-free loss
    patience: int = 0
    ema_rate: float = 0.9999             # EMA decay of the sampling weights
    ema_warmup: bool | None = None      # None: on, off when faithful (the original: 0.9999 from step 0)
    # --- r-Shortcut recognizability predictor (sketchlab's; not in the released code) ---
    recognizer_hidden: int = 256         # r-Shortcut predictor: GRU hidden units
    recognizer_layers: int = 2           # r-Shortcut predictor: GRU layers

    @property
    def pen_rule(self) -> str:
        """The pen decoding in effect (`pen_decoding`, else by mode)."""
        if self.pen_decoding is not None:
            return self.pen_decoding
        return "original" if self.faithful else "probability"

    @property
    def ema_warms_up(self) -> bool:
        return (not self.faithful) if self.ema_warmup is None else bool(self.ema_warmup)

    @property
    def checkpoint(self) -> str:
        """The weights samples come from by default (`sample_from`, else by mode)."""
        if self.sample_from is not None:
            return self.sample_from
        return "latest" if self.faithful else "best"

    @property
    def clip(self) -> float | None:
        if self.clip_x0 == "auto":
            return 1.0 if self.faithful else None
        if self.clip_x0 is None or float(self.clip_x0) <= 0:
            return None
        return float(self.clip_x0)


@dataclass
class Options(SampleOptions):
    """SketchKnitter's sampling options (the original's `sample.py` flags, and more). `None`
    takes the config's value (`sampler`, `sample_steps`, `spacing`, `clip_x0`, `use_ema`,
    `pen_break`)."""

    temperature: float | None = field(default=None, metadata={
        "help": "sampling temperature (default: the model's configured one; SketchKnitter: the "
                "scale of the initial and the injected noise, 1.0)"})
    batch_size: int = field(default=256, metadata={"help": "how many sketches are drawn at once"})
    sampler: Literal["ddpm", "ddim", "rshortcut"] | Sampler | None = field(default=None, metadata={
        "help": "diffusion sampler (SketchKnitter): ddpm (ancestral), ddim, or rshortcut (DDIM "
                "on the recognizability schedule, sketchlab's reconstruction of the paper's "
                "shortcut; needs --classifier once); or a ready Sampler"})
    steps: int | str | Sequence[int] | None = field(default=None, metadata={
        "help": "diffusion sampling steps (SketchKnitter; default: all T for ddpm/ddim, 30 for "
                "rshortcut); also the original's strings (ddim30, 10,10,10) or explicit timesteps"})
    spacing: Literal["ddim", "even", "linear", "quadratic"] | Callable | None = field(
        default=None, metadata={
            "help": "how the diffusion steps are spread (SketchKnitter): ddim (the original's "
                    "stride), even, linear, quadratic"})
    eta: float = field(default=0.0, metadata={
        "help": "DDIM's eta (SketchKnitter): 0 deterministic, 1 as stochastic as DDPM"})
    clip_x0: float | None = field(default=None, metadata={
        "help": "clamp the x0 estimate to [-c, c] at every reverse step (SketchKnitter; "
                "default: the config's clip_x0; <= 0: no clamp)"})
    use_ema: bool | None = field(default=None, metadata={
        "help": "sample with the EMA weights (SketchKnitter; default: the config's, on)"})
    pen_break: float | None = field(default=None, metadata={
        "help": "the pen rule's threshold (SketchKnitter; default: the config's 0.5; sample.sh "
                "uses 0.1)"})
    pen_decoding: Literal["probability", "original"] | None = field(default=None, metadata={
        "help": "SketchKnitter's pen rule: probability (lift where P(lift) >= pen-break) or "
                "original (sample.py: lift where the raw class-0 logit >= pen-break); default: "
                "the config's (original when faithful)"})
    noise_level: float = field(default=0.5, metadata={
        "help": "SketchKnitter: refinement noise level t0/T in [0, 1] for the reference "
                "sketches (SDEdit; 0 returns them unchanged)"})
    category: int | str | None = field(default=None, metadata={
        "help": "the category to draw (class-conditional SketchKnitter: a name or an index; "
                "default: the categories in turn; references keep their own)"})
    extra_points: int = field(default=0, metadata={
        "help": "free rows appended to each reference sketch for refinement (SketchKnitter)"})
    fast: bool | None = field(default=None, metadata={
        "help": "run each step on static buffers with low-precision shadow weights, as a CUDA "
                "graph on CUDA (SketchKnitter; default: on CUDA only)"})
    compile: bool | str = field(default=False, metadata={
        "help": "torch.compile the fast path's step (SketchKnitter): true or a mode name, "
                "e.g. max-autotune-no-cudagraphs"})
    fast_dtype: Literal["bfloat16", "float16", "float32"] | torch.dtype | None = field(
        default=None, metadata={
            "help": "the fast path's weight precision (SketchKnitter; default: bfloat16 on CUDA "
                    "unless the config's amp is off, float32 on a CPU)"})


# The original's flags (script_util / train.py / sample.py) that sketchlab ignores: they have no
# effect there (attention_resolutions: `script_util.py` `create_model` turns "16,8" into ds 6
# and 12, which the UNet's ds of 1, 2, 4, 8 never equals, so only the middle block attends) or
# are bookkeeping of its scripts. (use_fp16 maps to `amp`: the original's fp16 path does not work,
# as `unet.py` `UNetModel.convert_to_fp16` halves only the convolutions while `inner_dtype` stays
# float32, and becomes bf16 autocast; without it the original is float32.)
_ORIGINAL_IGNORED = {
    "attention_resolutions", "use_checkpoint", "num_heads_upsample", "microbatch",
    "rescale_timesteps", "rescale_learned_sigmas", "log_interval", "save_interval",
    "resume_checkpoint", "fp16_scale_growth", "lr_anneal_steps", "model_path", "num_samples",
    "data_dir", "schedule_sampler", "in_channels",
}


def config_from_original(flags: dict, **overrides) -> Config:
    """A Config from the original's command-line flags (`--image_size 96 --num_res_blocks 3
    --diffusion_steps 1000 --use_ddim True --timestep_respacing ddim30 ...`), faithful by default
    and float32 unless `--use_fp16 True` (then bf16 autocast).

    Unsupported settings of the original (learn_sigma, class_cond, use_kl, predict_xstart,
    use_scale_shift_norm=False) raise a ConfigError naming the flag.
    """
    def as_bool(v):
        return v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes")

    out: dict = {"faithful": True, "amp": as_bool(flags.get("use_fp16", False))}
    for key, value in flags.items():
        if key in _ORIGINAL_IGNORED or key == "use_fp16":
            continue
        if key in ("image_size", "num_channels"):
            n = int(value)
            for other in ("num_points", "model_channels"):
                if other in out and out[other] != n:
                    raise ConfigError(f"image_size and num_channels must be equal (the points are "
                                      f"the UNet's channels); got {out[other]} and {n}")
            out["num_points"] = out["model_channels"] = n
        elif key in ("num_res_blocks", "num_heads", "diffusion_steps", "batch_size"):
            out[key] = int(value)
        elif key == "lr":
            out["learning_rate"] = float(value)
        elif key in ("dropout", "weight_decay", "pen_break"):
            out[key] = float(value)
        elif key == "ema_rate":
            out[key] = float(str(value).split(",")[0])
        elif key == "noise_schedule":
            out[key] = str(value)
        elif key == "use_ddim":
            out["sampler"] = "ddim" if as_bool(value) else "ddpm"
        elif key == "timestep_respacing":
            out["sample_steps"] = str(value) or None
        elif key == "clip_denoised":
            out["clip_x0"] = 1.0 if as_bool(value) else None
        elif key == "class_cond":
            out["class_cond"] = as_bool(value)
        elif key in ("learn_sigma", "use_kl", "predict_xstart"):
            if as_bool(value):
                # learn_sigma cannot work in the original either: `unet.py` `UNetModel`'s
                # epsilon head always outputs 2 channels, whatever `out_channels` says.
                raise ConfigError(f"--{key} True is not supported")
        elif key == "use_scale_shift_norm":
            if not as_bool(value):
                raise ConfigError("--use_scale_shift_norm False is not supported")
        else:
            raise ConfigError(f"unknown SketchKnitter flag --{key}")
    out.update(overrides)
    return Config(**out)


def faithful_scale_factor(sketches: Sequence[np.ndarray]) -> float:
    """The original's `np.std(np.concatenate(sketches))` (`image_datasets.py`
    `SketchDataset.calculate_normalizing_scale_factor`): all three columns, pen bits included,
    unlike sketch-rnn's dx, dy only."""
    arr = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1, 3) for s in sketches])
    if arr.size == 0:
        raise DataError("cannot compute a scale factor from an empty training set")
    std = float(arr.std())
    if not np.isfinite(std) or std <= 0:
        raise DataError(f"scale factor is {std}: every value in the training set is identical")
    return std


def decode_pen(logits: torch.Tensor, pen_break: float = 0.5, rule: str = "probability") -> torch.Tensor:
    """Pen states (1.0 = lifted) from the pen head's logits (..., 2).

    "probability" (corrected): lifted where P(lift) = softmax(logits)[..., 1] >= pen_break.
    "original": `sample.py`'s `bin_pen`, which thresholds column 2 of cat(sample, logits),
    i.e. the RAW logit of class 0 ("pen stays down"): lifted where logits[..., 0] >= pen_break.
    """
    if rule == "probability":
        return (torch.softmax(logits.float(), dim=-1)[..., 1] >= pen_break).float()
    if rule == "original":
        return (logits[..., 0].float() >= pen_break).float()
    raise ConfigError(f"pen decoding {rule!r}: choose one of {', '.join(PEN_DECODINGS)}")


class SketchKnitter(SketchModel):
    name = "sketchknitter"
    Config = Config
    Options = Options
    can_sample = True
    can_heal = True         # SDEdit: noise references to noise_level, then denoise
    heal_option = "noise_level"

    def __init__(self, config: Config | None = None):
        super().__init__(config or Config())
        cfg = self.config
        if cfg.num_points < 1:
            raise ConfigError(f"num_points must be >= 1, got {cfg.num_points}")
        if cfg.pen_decoding is not None and cfg.pen_decoding not in PEN_DECODINGS:
            raise ConfigError(f"pen_decoding={cfg.pen_decoding!r}: choose one of "
                              f"{', '.join(PEN_DECODINGS)}")
        if cfg.sample_from is not None and cfg.sample_from not in CHECKPOINTS:
            raise ConfigError(f"sample_from={cfg.sample_from!r}: choose one of {', '.join(CHECKPOINTS)}")
        self.diffusion = GaussianDiffusion.named(cfg.noise_schedule, cfg.diffusion_steps)
        self.unet = UNet1D(
            num_points=cfg.num_points, in_features=2 if cfg.faithful else 3,
            model_channels=cfg.model_channels, lift_dim=cfg.lift_dim,
            channel_mult=tuple(cfg.channel_mult), num_res_blocks=cfg.num_res_blocks,
            num_heads=cfg.num_heads, dropout=cfg.dropout, layout=cfg.layout,
            num_classes=cfg.num_classes if cfg.class_cond else 0)
        self.ema = EMA(self.unet, cfg.ema_rate, cfg.ema_warms_up)
        # Data statistics saved with the weights: the offset scale the data were divided by,
        # the training length histogram (lengths are drawn from it at sampling time) and the
        # r-Shortcut's mean recognizability curve (all zeros until `calibrate_shortcut`).
        self.register_buffer("data_scale", torch.ones((), dtype=torch.float64))
        self.register_buffer("length_counts", torch.zeros(cfg.num_points + 1, dtype=torch.float64))
        self.register_buffer("shortcut_curve", torch.zeros(cfg.diffusion_steps))
        self._fast_cache: dict = {}

    # ---------------------------------------------------------------------------------------
    # Data
    # ---------------------------------------------------------------------------------------
    @property
    def scale_factor(self) -> float:
        """The offset scale of the training data, stored with the weights (a buffer)."""
        return float(self.data_scale)

    @scale_factor.setter
    def scale_factor(self, value: float) -> None:
        self.data_scale.fill_(float(value))

    def default_checkpoint(self) -> str:
        """The weights `runs.open_run` loads unless told otherwise: the config's `sample_from`
        (faithful: the final weights, as the original samples its last checkpoint)."""
        return self.config.checkpoint

    def keep_sketch(self, sketch: np.ndarray) -> bool:
        """The original's filter: 0 < L <= N (longer sketches are dropped, not truncated)."""
        return 0 < len(sketch) <= self.config.num_points

    @classmethod
    def filter_sketches(cls, config, sketches):
        """The original's `purify`: keep 0 < L <= num_points (the 96 is the UNet's channels)."""
        return clip_and_limit(sketches, config.num_points, "num_points")

    @classmethod
    def compute_scale_factor(cls, config, train_sketches: Sequence[np.ndarray]) -> float:
        """The offset scale for this mode (faithful: pen column included, as the original's
        `SketchDataset.calculate_normalizing_scale_factor`)."""
        if config.faithful:
            return faithful_scale_factor(train_sketches)
        return xy_scale_factor(train_sketches)

    @classmethod
    def adapt_config(cls, config, splits):
        """Fill in the number of classes (class-conditional) and the data bound of
        clip_x0="auto" (clean mode) from the normalised train split."""
        if config.class_cond and "train" in splits:
            n_classes = len(splits["train"].category_names)
            if n_classes < 1:
                raise DataError("class_cond: the training sketches carry no categories")
            config = dataclasses.replace(config, num_classes=n_classes)
        if config.clip_x0 != "auto" or config.faithful or "train" not in splits:
            return config
        pts = splits["train"].points
        if len(pts) == 0:
            return config
        return dataclasses.replace(config, clip_x0=round(float(np.abs(pts[:, :2]).max()), 4))

    def setup_from_data(self, data) -> None:
        super().setup_from_data(data)
        self.set_data_stats(data.scale_factor, data.splits["train"].lengths)

    def set_data_stats(self, scale_factor: float, lengths: Sequence[int] | None = None) -> None:
        """Record the training data's scale factor and (optionally) its sketch lengths."""
        self.data_scale.fill_(float(scale_factor))
        if lengths is not None:
            ls = np.clip(np.asarray(lengths, dtype=np.int64), 1, self.config.num_points)
            counts = np.bincount(ls, minlength=self.config.num_points + 1)
            self.length_counts.copy_(torch.from_numpy(counts.astype(np.float64)))

    def make_batch(self, sketches: Sequence[np.ndarray], train: bool = True,
                   rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """Pad normalised stroke-3 sketches to N rows of (0, 0, 0); `mask` marks real rows.

        A sketch longer than N is truncated (its last kept point lifts the pen); use
        `keep_sketch` to drop such sketches beforehand as the original does. With `train`, the
        optional augmentations (`random_scale`, `augment_prob`; off by default as in the
        original) are applied with `rng`.
        """
        n = self.config.num_points
        c = self.config
        augment = train and (c.random_scale > 0 or c.augment_prob > 0)
        if augment and rng is None:
            rng = np.random.default_rng()
        if len(sketches) == 0:
            raise DataError("make_batch: empty list of sketches")
        x0 = np.zeros((len(sketches), n, 2), np.float32)
        pen = np.zeros((len(sketches), n), np.int64)
        mask = np.zeros((len(sketches), n), np.float32)
        for i, s in enumerate(sketches):
            s = np.asarray(s, dtype=np.float32)
            if s.ndim != 2 or s.shape[1] != 3 or len(s) == 0:
                raise DataError(f"make_batch: sketch {i} has shape {s.shape}, expected (L>0, 3)")
            if augment:
                s = augment_strokes(random_scale(s, c.random_scale, rng), c.augment_prob, rng)
            length = min(len(s), n)
            x0[i, :length] = s[:length, :2]
            pen[i, :length] = s[:length, 2] > 0.5
            if len(s) > n:
                pen[i, length - 1] = 1
            mask[i, :length] = 1.0
        if not np.all(np.isfinite(x0)):
            raise DataError("make_batch: a sketch holds NaN or inf offsets")
        return {"x0": torch.from_numpy(x0), "pen": torch.from_numpy(pen),
                "mask": torch.from_numpy(mask)}

    # ---------------------------------------------------------------------------------------
    # Network wrapper and loss
    # ---------------------------------------------------------------------------------------
    def _denoiser(self, net: nn.Module, labels: torch.Tensor | None = None):
        """(x_t, original timesteps, mask) -> (eps, pen logits) for the UNet `net`; a
        class-conditional net reads the class of each row from `labels` (read at call time, so a
        captured step sees new labels copied into the same tensor)."""
        faithful = self.config.faithful
        scale = self.diffusion.scale_timesteps

        def denoise(x, t, mask):
            inp = x if faithful else torch.cat([x, mask[..., None].to(x.dtype)], dim=-1)
            return net(inp, scale(t)) if labels is None else net(inp, scale(t), y=labels)
        return denoise

    def batch_labels(self, batch: dict) -> torch.Tensor | None:
        """The class of each sketch of a batch for a class-conditional model (the trainer's
        `category`), None for an unconditional one."""
        if not self.config.class_cond:
            return None
        if "category" not in batch:
            raise DataError("a class-conditional SketchKnitter trains on sketches with categories "
                            "(the batch has none)")
        return batch["category"].to(self.data_scale.device, torch.long)

    def _loss_mask(self, valid: torch.Tensor) -> torch.Tensor:
        # Faithful: every row, padding included, is data (`SketchDataset.__getitem__` pads with
        # (0, 0, 0) rows and `training_losses` averages over all of them).
        return torch.ones_like(valid) if self.config.faithful else valid

    def loss(self, batch: dict, step: int = 0, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """mean over sketches of mse(eps, eps_hat) over real rows + 0.01 * CE(pen)
        (`gaussian_diffusion.py` `GaussianDiffusion.training_losses`).

        `t` and `noise` override the random timesteps / noise (for tests).
        """
        device = self.data_scale.device
        x0 = batch["x0"].to(device, torch.float32)
        pen = batch["pen"].to(device, torch.long)
        valid = batch["mask"].to(device, torch.float32)
        m = self._loss_mask(valid)
        b = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.diffusion.num_timesteps, (b,), device=device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.diffusion.q_sample(x0, t, noise) * m[..., None]
        eps, logits = self._denoiser(self.unet, self.batch_labels(batch))(x_t, t, m)
        sq = (eps.float() - noise).square().sum(-1) * m
        mse = sq.sum(1) / (x0.shape[-1] * m.sum(1).clamp_min(1))
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), pen.reshape(-1),
                             reduction="none").reshape(pen.shape)
        pen_ce = (ce * m).sum() / m.sum().clamp_min(1)
        if self.training:
            lengths = valid.sum(1).long().clamp(0, self.config.num_points)
            self.length_counts.index_add_(0, lengths, torch.ones_like(lengths, dtype=torch.float64))
        mse = mse.mean()
        return {"loss": mse + self.config.pen_loss_weight * pen_ce, "mse": mse, "pen_ce": pen_ce}

    def on_step_end(self, step: int) -> None:
        self.ema.update(self.unet)

    @classmethod
    def shipped_state(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A pretrained export keeps the EMA network only: it is the one that samples
        (`use_ema`), and the training network would double the file."""
        return {k: v for k, v in state.items() if not k.startswith("unet.")}

    @classmethod
    def complete_state(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An export without the training network gets it back as a copy of the EMA one (so
        `use_ema=False` samples the same weights)."""
        if any(k.startswith("unet.") for k in state):
            return state
        restored = {"unet." + k[len("ema.module."):]: v for k, v in state.items()
                    if k.startswith("ema.module.")}
        return {**state, **restored}

    def load_original_weights(self, state_dict: dict, ema: bool = True) -> None:
        """Load a state dict of the original `UNetModel` (its `model*.pt` or `ema_*.pt`, read
        with `torch.load(path, weights_only=True)`) into the UNet and, by default, the EMA copy.
        Needs the original's layout: `faithful=True` (inputs are (dx, dy) only)."""
        if not self.config.faithful or self.config.layout != "points":
            raise ConfigError("original weights need Config(faithful=True, layout='points')")
        try:
            self.unet.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            raise ConfigError(f"not a state dict of the original UNet with this config ({e})") from e
        if ema:
            self.ema.copy_from(self.unet)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """The original's optimiser (the trainer builds the same from the config)."""
        c = self.config
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad],
                                 lr=c.learning_rate, weight_decay=c.weight_decay,
                                 betas=(c.adam_beta1, c.adam_beta2))

    # ---------------------------------------------------------------------------------------
    # Sampling
    # ---------------------------------------------------------------------------------------
    def set_shortcut_curve(self, curve) -> None:
        curve = torch.as_tensor(np.asarray(curve, dtype=np.float32))
        if curve.shape != self.shortcut_curve.shape:
            raise ConfigError(f"shortcut curve must have {self.diffusion.num_timesteps} values")
        self.shortcut_curve.copy_(curve)

    def clip(self, clip_x0: float | None = None) -> float | None:
        """The x0 clamp: the option's (<= 0: none), else the config's."""
        if clip_x0 is None:
            return self.config.clip
        return float(clip_x0) if float(clip_x0) > 0 else None

    def make_sampler(self, sampler: str | Sampler | None = None, steps=None, spacing=None,
                     eta: float = 0.0, max_timestep: int | None = None,
                     clip_x0: float | None = None) -> Sampler:
        """A sampler with its timesteps set; `sampler` may also be a ready Sampler object."""
        c = self.config
        if isinstance(sampler, Sampler):
            if not sampler.timesteps or max_timestep is not None:
                sampler.set_timesteps(steps, spacing or c.spacing, max_timestep=max_timestep)
            return sampler
        name = sampler or c.sampler
        steps = steps if steps is not None else c.sample_steps
        if name == "rshortcut":
            if not bool((self.shortcut_curve != 0).any()):
                raise ConfigError("the r-Shortcut sampler needs a recognizability curve: "
                                  "calibrate it once with a trained classifier, `sketchlab sample "
                                  "RUN --sampler rshortcut --classifier CLF_RUN` (saved into RUN; "
                                  "--calibration-sketches sets its size; Python: "
                                  "sketchlab.runs.calibrate_shortcut(run, CLF_RUN))")
            spacing = RecognizabilitySpacing(self.shortcut_curve.cpu().numpy())
            steps = 30 if steps is None else steps
        s = make_sampler(name, self.diffusion, clip_x0=self.clip(clip_x0), eta=eta)
        s.set_timesteps(steps, spacing or c.spacing, max_timestep=max_timestep)
        return s

    def _net(self, use_ema: bool | None) -> nn.Module:
        use_ema = self.config.use_ema if use_ema is None else use_ema
        return self.ema.module if use_ema else self.unet

    def _runner(self, net: nn.Module, batch: int, device: torch.device, compile: bool | str,
                dtype: torch.dtype, clip: float | None):
        """The bf16 + CUDA-graph step for `net`, cached per (net, batch, device, clip, dtype),
        and its static label tensor (class-conditional; copy each batch's labels into it)."""
        key = (id(net), batch, str(device), clip, compile, dtype)
        entry = self._fast_cache.get(key)
        if entry is None:
            shadow = bf16_shadow(net, dtype)
            # compile: True (inductor's default mode) or a mode name ("max-autotune-no-cudagraphs";
            # the step is captured as a CUDA graph here, so not "reduce-overhead"/"max-autotune")
            mode = compile if isinstance(compile, str) else None
            fn = torch.compile(shadow, dynamic=False, mode=mode) if compile else shadow
            labels = (torch.zeros(batch, dtype=torch.long, device=device)
                      if self.config.class_cond else None)
            runner = StepRunner(self._denoiser(fn, labels), (batch, self.config.num_points, 2),
                                device, clip, use_graph=device.type == "cuda")
            entry = self._fast_cache[key] = (shadow, runner, labels)
        shadow, runner, labels = entry
        sync_shadow(shadow, net)
        return runner, labels

    def sample_labels(self, n: int, category, references) -> np.ndarray | None:
        """Each new sketch's class (class-conditional): the references' own, the requested
        `category` (a name or an index), or the categories in turn."""
        if not self.config.class_cond:
            if category is not None:
                raise ConfigError("--category needs a class-conditional SketchKnitter "
                                  "(trained with class_cond=1)")
            return None
        names = list(self.categories)
        k = self.config.num_classes
        if isinstance(references, Sketches) and references.category is not None:
            lookup = {name: i for i, name in enumerate(names)}
            own = [references.category_name(i) for i in range(len(references))]
            unknown = sorted({c for c in own if c not in lookup})
            if unknown:
                raise DataError(f"references of categories {unknown} that this model was not "
                                f"trained on ({', '.join(names)})")
            return np.array([lookup[c] for c in own], np.int64)
        if category is None:
            return np.arange(n, dtype=np.int64) % k
        if isinstance(category, str) and not category.lstrip("-").isdigit():
            if category not in names:
                raise ConfigError(f"--category {category!r}: this model draws "
                                  f"{', '.join(names) or f'classes 0..{k - 1}'}")
            return np.full(n, names.index(category), np.int64)
        index = int(category)
        if not 0 <= index < k:
            raise ConfigError(f"--category {index}: choose 0..{k - 1} ({', '.join(names)})")
        return np.full(n, index, np.int64)

    def draw_lengths(self, n: int, generator) -> np.ndarray:
        """n sketch lengths from the training length histogram (all num_points when faithful)."""
        if self.config.faithful:
            return np.full(n, self.config.num_points, np.int64)
        counts = self.length_counts.detach().cpu().double()
        if counts.sum() <= 0:
            raise ConfigError("the model has no length distribution (it was never trained); "
                              "pass lengths= or call set_data_stats(scale, lengths)")
        g = generator if generator is not None and generator.device.type == "cpu" else None
        return torch.multinomial(counts / counts.sum(), n, replacement=True, generator=g).numpy()

    @torch.no_grad()
    def generate(self, n: int | None = None, *, references: Sketches | Sequence | None = None,
                 seed: int = 0, options: Options | None = None,
                 lengths: Sequence[int] | None = None, generator: torch.Generator | None = None,
                 device=None, callback: StepCallback | None = None, progress: bool | None = None,
                 **overrides) -> Sketches:
        """Sample `n` sketches, or refine/heal `references` (SDEdit): they are noised to
        t0 = noise_level * T, then denoised; their lengths are kept (+ `extra_points` free rows
        in the default mode). References are Sketches in any units (their `scale_factor` says
        which) or a list of stroke-3 arrays in the model's normalised units.

        Options (`Options`, or its fields as keywords): sampler "ddpm" (ancestral, T steps
        unless `steps`), "ddim" (eta 0 by default), "rshortcut" (DDIM on the recognizability
        schedule, S=30 by default), or a Sampler; steps / spacing: how many steps and how they
        are spread ("ddim" stride as the original's "ddimK", "even", "linear" = range(0, T,
        T//S), "quadratic"), or an explicit list; temperature scales the initial and the
        injected noise. `fast` (default: on CUDA) runs a `fast_dtype` copy of the weights
        (default bf16 on CUDA unless the config's amp is off, fp32 on CPU, which has no fast
        bf16), each step on static
        buffers, captured as a CUDA graph on CUDA (`compile` adds torch.compile).

        Run-time arguments: `lengths` of the new sketches (default: drawn from the training
        lengths), `generator` (default: a CPU generator seeded with `seed`), `device` (default:
        the model's), callback(i, t, x_prev, x0_hat, eps_hat, pen_logits) sees every step (the
        buffers are reused: clone what you keep), `progress` shows a bar (default: when
        stderr is a terminal).

        Returns stroke-3 sketches in the data's normalised units, `scale_factor` set, carrying
        the references' categories (or the model's one category).
        """
        c = self.config
        opts = self.make_options(options, **overrides)
        if references is not None and n is not None:
            m = min(int(n), len(references))
            references = (references[np.arange(m)] if isinstance(references, Sketches)
                          else list(references)[:m])
        temperature = 1.0 if opts.temperature is None else float(opts.temperature)
        if generator is None:
            generator = torch.Generator().manual_seed(int(seed))
        device = torch.device(self.data_scale.device if device is None else device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        fast = device.type == "cuda" if opts.fast is None else bool(opts.fast)
        fast_dtype = opts.fast_dtype
        if fast_dtype is None:
            # bf16 is the fast default on CUDA; amp=False (the original, `paper_config`) samples
            # in float32 like everything else
            low = device.type == "cuda" and c.amp
            fast_dtype = torch.bfloat16 if low else torch.float32
        elif isinstance(fast_dtype, str):
            fast_dtype = getattr(torch, fast_dtype)
        pen_break = c.pen_break if opts.pen_break is None else opts.pen_break
        pen_rule = c.pen_rule if opts.pen_decoding is None else opts.pen_decoding
        clip = self.clip(opts.clip_x0)
        batch_size = int(opts.batch_size)
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}")
        net = self._net(opts.use_ema)

        if references is not None:
            x_c, pen_c, lengths_arr, t0 = self._prepare_condition(references, opts.noise_level,
                                                                  opts.extra_points)
            if t0 < 0:  # noise level 0: nothing to refine
                return self.label_samples(self.to_sketches(x_c, pen_c, lengths_arr), _labelled(references))
            smp = self.make_sampler(opts.sampler, opts.steps, opts.spacing, opts.eta,
                                    max_timestep=t0, clip_x0=opts.clip_x0)
            n = len(lengths_arr)
        else:
            if n is None or n < 1:
                raise ConfigError(f"generate: n must be >= 1, got {n}")
            lengths_arr = (np.asarray(lengths, dtype=np.int64) if lengths is not None
                           else self.draw_lengths(n, generator))
            if len(lengths_arr) != n or lengths_arr.min() < 1 or lengths_arr.max() > c.num_points:
                raise ConfigError(f"lengths must be {n} values in [1, {c.num_points}]")
            x_c = None
            smp = self.make_sampler(opts.sampler, opts.steps, opts.spacing, opts.eta,
                                    clip_x0=opts.clip_x0)
        t_start = smp.timesteps[0]

        y = self.sample_labels(n, opts.category, references)
        outs, pens = [], []
        runner, static_labels = ((self._runner(net, batch_size, device, opts.compile, fast_dtype,
                                               clip)) if fast else (None, None))
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            rows = batch_size if runner is not None else hi - lo
            mask = torch.zeros(rows, c.num_points, device=device)
            mask[:hi - lo] = length_mask(lengths_arr[lo:hi], c.num_points).to(device)
            mask[hi - lo:] = 1.0  # padding sketches of a static-shape batch (discarded)
            if c.faithful:
                mask.fill_(1.0)
            # Noise for the real rows only: the same stream with and without the fast path.
            noise = torch.zeros(rows, c.num_points, 2, device=device)
            noise[:hi - lo] = _randn((hi - lo, c.num_points, 2), generator, device)
            if x_c is None:
                x = noise * temperature
            else:
                xc = torch.zeros(rows, c.num_points, 2, device=device)
                xc[:hi - lo] = x_c[lo:hi].to(device)
                t = torch.full((rows,), t_start, device=device, dtype=torch.long)
                x = self.diffusion.q_sample(xc, t, noise * temperature)
            x = x * mask[..., None]
            labels = None
            if y is not None:
                labels = torch.zeros(rows, dtype=torch.long, device=device)
                labels[:hi - lo] = torch.from_numpy(y[lo:hi]).to(device)
            if runner is not None:
                if static_labels is not None:
                    static_labels.copy_(labels)
                x0, pen = runner.run(smp, x, mask, generator, temperature, callback, progress,
                                     rows=hi - lo)
            else:
                x0, pen = reverse_loop(self._denoiser(net, labels), smp, x, mask, generator,
                                       temperature, callback, progress)
            outs.append(x0[:hi - lo].float().cpu())
            pens.append(pen[:hi - lo].float().cpu())
        out = self.to_sketches(torch.cat(outs), decode_pen(torch.cat(pens), pen_break, pen_rule),
                               lengths_arr)
        if y is not None and references is None:       # each new sketch is of the class drawn
            out.category = y
            out.category_names = tuple(self.categories) or tuple(
                str(k) for k in range(self.config.num_classes))
            return out
        return self.label_samples(out, _labelled(references))

    @torch.no_grad()
    def corrupt(self, references: Sketches, *, strength: float, seed: int = 0, options=None,
                **overrides) -> Sketches:
        """The references noised to t0 = strength * T, as `heal(strength=noise_level, seed=...)`
        noises them before denoising (the same draws for the first `batch_size` references;
        later batches' noise comes after the first batch's sampling steps), with their own pen
        bits, as sketches."""
        self.require("can_heal", "heal sketches")
        opts = self.make_options(options, **overrides)
        x_c, pen_c, lengths, t0 = self._prepare_condition(references, float(strength),
                                                          opts.extra_points)
        if t0 >= 0:
            smp = self.make_sampler(opts.sampler, opts.steps, opts.spacing, opts.eta,
                                    max_timestep=t0, clip_x0=opts.clip_x0)
            generator = torch.Generator().manual_seed(int(seed))
            temperature = 1.0 if opts.temperature is None else float(opts.temperature)
            noise = _randn(tuple(x_c.shape), generator, torch.device("cpu"))
            t = torch.full((len(x_c),), smp.timesteps[0], dtype=torch.long)
            mask = length_mask(lengths, self.config.num_points)
            diffusion = self.diffusion
            x_c = diffusion.q_sample(x_c.to(self.data_scale.device), t.to(self.data_scale.device),
                                     (noise * temperature).to(self.data_scale.device)).cpu()
            x_c = x_c * mask[..., None]
        return self.label_samples(self.to_sketches(x_c, pen_c, lengths), _labelled(references))

    def _prepare_condition(self, condition, noise_level: float, extra_points: int):
        c = self.config
        if not 0.0 <= noise_level <= 1.0:
            raise ConfigError(f"noise_level (healing strength) must lie in [0, 1], got {noise_level}")
        if isinstance(condition, Sketches):
            scale_in = condition.scale_factor
            items = list(condition)
        else:
            scale_in, items = float(self.scale_factor), list(condition)
        if not items:
            raise DataError("references: no sketches given")
        # Sketches.scale_factor: offsets are in units of 1/scale of the raw data.
        ratio = scale_in / float(self.scale_factor)
        x_c = torch.zeros(len(items), c.num_points, 2)
        pen = torch.zeros(len(items), c.num_points)
        lengths = np.zeros(len(items), np.int64)
        for i, s in enumerate(items):
            s = validate_stroke3(s, f"reference sketch {i}")
            if len(s) > c.num_points:
                raise DataError(f"reference sketch {i} has {len(s)} points; this model takes at "
                                f"most {c.num_points} (simplify it with sketchlab.data.strokes."
                                f"simplify or drop it)")
            x_c[i, :len(s)] = torch.from_numpy(s[:, :2] * ratio)
            pen[i, :len(s)] = torch.from_numpy(s[:, 2])
            lengths[i] = c.num_points if c.faithful else min(len(s) + extra_points, c.num_points)
        t0 = int(round(noise_level * self.diffusion.num_timesteps)) - 1
        return x_c, pen, lengths, min(t0, self.diffusion.num_timesteps - 1)

    def to_sketches(self, x: torch.Tensor, pen: torch.Tensor, lengths: np.ndarray) -> Sketches:
        """(B, N, 2) offsets + (B, N) pen bits -> Sketches, each cut to its length."""
        arr = torch.cat([x.float(), pen.float()[..., None]], dim=-1).cpu().numpy()
        lengths = np.asarray(lengths, dtype=np.int64)
        keep = np.arange(arr.shape[1])[None, :] < lengths[:, None]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return Sketches(arr[keep], offsets, scale_factor=float(self.scale_factor))

    # ---------------------------------------------------------------------------------------
    # Features
    # ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, batch: dict, t: int = 0, use_ema: bool | None = None) -> torch.Tensor:
        """Pooled middle-block features `(B, C_mid)` of the denoiser at timestep `t`.

        A diffusion model has no latent code; these features of the (noise-free, scaled) input
        are what retrieval and t-SNE use. They are not a generative latent.
        """
        device = self.data_scale.device
        x0 = batch["x0"].to(device, torch.float32)
        m = self._loss_mask(batch["mask"].to(device, torch.float32))
        tt = torch.full((x0.shape[0],), int(t), device=device, dtype=torch.long)
        x_t = self.diffusion.q_sample(x0, tt, torch.zeros_like(x0)) * m[..., None]
        net = self._net(use_ema)
        inp = x_t if self.config.faithful else torch.cat([x_t, m[..., None]], -1)
        labels = None
        if self.config.class_cond:   # features given the sketch's class when known (else class 0)
            labels = (self.batch_labels(batch) if "category" in batch
                      else torch.zeros(x0.shape[0], dtype=torch.long, device=device))
        _, _, middle = net(inp, self.diffusion.scale_timesteps(tt), return_features=True, y=labels)
        return middle.float().mean(-1)


def _labelled(references) -> Sketches | None:
    """References that carry categories (Sketches), for the samples' labels."""
    return references if isinstance(references, Sketches) else None


def length_mask(lengths: np.ndarray, n: int) -> torch.Tensor:
    """(B, n) float mask: 1 on the first lengths[b] rows of each sketch."""
    return (torch.arange(n)[None, :] < torch.as_tensor(lengths)[:, None]).float()


def _randn(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    dev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=dev).to(device)


# ---- presets ---------------------------------------------------------------------------------
# `train.py` hard-codes `category=["moon.npz"]`; its README lists moon, airplane, fish, umbrella,
# train, spider, shoe, apple, lion, bus.
PAPER_CATEGORIES = ("moon",)


def paper_config(**overrides) -> Config:
    """The original code as released (`train.py` with `model_and_diffusion_defaults`, sampled as
    `sample.py`): `faithful=True` (padding as data, the pen-inclusive scale factor, x0 clamped to
    [-1, 1], `bin_pen`'s pen rule at 0.5, EMA 0.9999 from step 0, samples from the final weights),
    the code's UNet (num_res_blocks 2: 20.33M parameters; the scripts' 3 is `num_res_blocks=3`),
    T = 1000 linear, AdamW 1e-4, batch 4, 50,001 steps, DDPM over all 1,000 steps, float32
    everywhere (`amp=False`: training and the sampling fast path)."""
    return dataclasses.replace(Config(faithful=True, amp=False), **overrides)


def cpu_config(**overrides) -> Config:
    """A configuration that trains in under an hour on 2 CPU cores (corrected mode): the
    points-as-channels UNet at 96 points with one resolution halving and one block per level
    (channel_mult (1, 2), lift 64), batch 32, lr 2e-4, 6,000 steps at 0.36 s of one core each,
    EMA 0.999 with warm-up, validation on 20 batches every 500 steps; samples with DDIM over 50
    steps."""
    base = Config(channel_mult=(1, 2), num_res_blocks=1, lift_dim=64, batch_size=32,
                  learning_rate=2e-4, max_steps=6000, ema_rate=0.999, eval_every=500,
                  max_valid_batches=20, sampler="ddim", sample_steps=50)
    return dataclasses.replace(base, **overrides)
