"""SketchKnitter (Wang et al., ICLR 2023): denoising diffusion over stroke-3 points.

A sketch is up to N = 96 stroke-3 points. The offsets (dx, dy) are diffused with the linear
schedule (T = 1000) and a 1-D UNet predicts the noise (epsilon) plus pen-state logits from a
separate head; pen states are not diffused (spec sections 2-4). Sampling: DDPM, DDIM, and the
recognizability-guided shortcut (r-Shortcut, spec 6); conditional refinement / healing is
SDEdit: noise a given sketch to an intermediate step and denoise it (spec 7.3).

Two modes (`Config.faithful`):

* ``faithful=True`` reproduces the original code (spec 1-5): sketches padded with (0, 0, 0) rows
  to 96 points, no mask, the loss covers the padding, the scale factor is the std of all three
  columns (B3), x0_hat is clamped to [-1, 1] (B2), every sample has 96 points. The inverted pen
  decoding of `sample.py` (B1) is *not* copied: pen = softmax(logits)[..., 1] >= pen_break.
* ``faithful=False`` (default, corrected): padding rows are masked out of the loss and held at
  exactly zero (never noised), the network is told which rows are real (a mask feature next to
  (dx, dy)), the sketch length is drawn from the training lengths at sampling time, the scale
  factor is the std of dx, dy only (as sketch-rnn), and x0_hat is not clamped unless asked.

Both use the original's points-as-channels UNet (20.33M parameters at the defaults), which the
speed comparison with the original needs anyway; `layout="sequence"` is an optional variant.

EMA: the original averages with rate 0.9999 and no warm-up; here the rate is configurable and a
warm-up (d = min(rate, (1+n)/(10+n))) is on by default, because minutes-long runs would
otherwise sample from nearly random weights. Samples use the EMA weights (A12).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

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
from sketchlab.models.base import SketchModel, clip_and_limit
from sketchlab.nn.diffusion import (
    GaussianDiffusion, RecognizabilitySpacing, Sampler, StepCallback, StepRunner, bf16_shadow,
    make_sampler, reverse_loop, sync_shadow,
)
from sketchlab.nn.ema import EMA
from sketchlab.nn.unet1d import UNet1D, timestep_embedding

__all__ = ["Config", "config_from_original", "SketchKnitter", "RecognizabilityNet", "train_recognizability",
           "recognizability_curve", "calibrate_shortcut", "decode_pen", "faithful_scale_factor"]


@dataclass
class Config(TrainingConfig):
    # --- data ---
    num_points: int = 96                # N: sketches with 0 < L <= N are kept (spec 1.2)
    faithful: bool = False              # reproduce the original's data/loss/sampling quirks
    random_scale: float = 0.0           # training augmentation (none in the original): stretch
    augment_prob: float = 0.0           # dx, dy by U(1 +- s); sketch-rnn's point dropping
    # --- network (spec 3.2) ---
    layout: str = "points"              # "points" (original: points are Conv1d channels) | "sequence"
    model_channels: int = 96            # must equal num_points in the points layout
    lift_dim: int = 128                 # Linear(2 -> 128) lifting of each point
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 2             # code default 2 (20.33M); the scripts say 3 (26.53M)
    num_heads: int = 4
    dropout: float = 0.0
    # --- diffusion (spec 4) ---
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    pen_loss_weight: float = 0.01       # loss = mse(eps) + 0.01 * CE(pen)
    # --- sampling (spec 5) ---
    sampler: str = "ddpm"               # "ddpm" | "ddim" | "rshortcut"
    sample_steps: int | str | None = None  # None: all T (ddpm, ddim), 30 (rshortcut); or "ddim30"
    spacing: str = "ddim"               # respacing of ddpm/ddim: ddim | even | linear | quadratic
    # x0_hat is clamped to [-clip, clip] at every reverse step. "auto": 1.0 when faithful (B2, the
    # original's clamp on unbounded data); else the training split's largest |dx|, |dy| (filled
    # in by `adapt_config`, so config.json records it), a bound no real sketch exceeds. Without
    # it, few-step DDIM (eta 0) on a young model overshoots: on a CPU apple model DDIM-30 drew
    # |offsets| 3.2x the data's, 1.7x with the data bound, while DDPM was unchanged. None: no clamp.
    clip_x0: float | str | None = "auto"
    pen_break: float = 0.5              # pen lifted where softmax(logits)[..., 1] >= pen_break
    use_ema: bool = True
    # --- optimisation (spec 4.4): AdamW, constant lr 1e-4, no clipping ---
    learning_rate: float = 1e-4
    min_learning_rate: float = 0.0
    decay_rate: float = 1.0             # constant learning rate (lr_anneal_steps = 0)
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    batch_size: int = 4                 # the original's; use 128-256 on a GPU
    max_steps: int = 50001              # hard-coded in the original (B6)
    grad_clip: float = 0.0
    clip_mode: str = "none"             # the original clips nothing
    valid_metric: str = "loss"
    eval_every: int = 1000              # the original never validates; we keep the best EMA-free loss
    patience: int = 0
    ema_rate: float = 0.9999
    ema_warmup: bool = True
    # --- r-Shortcut recognizability predictor (spec 6.3) ---
    recognizer_hidden: int = 256
    recognizer_layers: int = 2

    @property
    def clip(self) -> float | None:
        if self.clip_x0 == "auto":
            return 1.0 if self.faithful else None
        if self.clip_x0 is None or float(self.clip_x0) <= 0:
            return None
        return float(self.clip_x0)


# The original's flags (script_util / train.py / sample.py) that sketchlab ignores: they have no
# effect there (attention_resolutions, B9), are replaced (use_fp16 -> bf16 autocast) or are
# bookkeeping of its scripts.
_ORIGINAL_IGNORED = {
    "attention_resolutions", "use_checkpoint", "use_fp16", "num_heads_upsample", "microbatch",
    "rescale_timesteps", "rescale_learned_sigmas", "log_interval", "save_interval",
    "resume_checkpoint", "fp16_scale_growth", "lr_anneal_steps", "model_path", "num_samples",
    "data_dir", "schedule_sampler", "in_channels",
}


def config_from_original(flags: dict, **overrides) -> Config:
    """A Config from the original's command-line flags (`--image_size 96 --num_res_blocks 3
    --diffusion_steps 1000 --use_ddim True --timestep_respacing ddim30 ...`), faithful by default.

    Unsupported settings of the original (learn_sigma, class_cond, use_kl, predict_xstart,
    use_scale_shift_norm=False) raise a ConfigError naming the flag.
    """
    def as_bool(v):
        return v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes")

    out: dict = {"faithful": True}
    for key, value in flags.items():
        if key in _ORIGINAL_IGNORED:
            continue
        if key in ("image_size", "num_channels"):
            n = int(value)
            for other in ("num_points", "model_channels"):
                if other in out and out[other] != n:
                    raise ConfigError(f"image_size and num_channels must be equal (the points are "
                                      f"the UNet's channels, spec 3.1); got {out[other]} and {n}")
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
        elif key in ("learn_sigma", "class_cond", "use_kl", "predict_xstart"):
            if as_bool(value):
                raise ConfigError(f"--{key} True is not supported (the original cannot use it "
                                  "either: spec 4.2, B8, 1.4)")
        elif key == "use_scale_shift_norm":
            if not as_bool(value):
                raise ConfigError("--use_scale_shift_norm False is not supported")
        else:
            raise ConfigError(f"unknown SketchKnitter flag --{key}")
    out.update(overrides)
    return Config(**out)


def faithful_scale_factor(sketches: Sequence[np.ndarray]) -> float:
    """The original's `np.std(np.concatenate(sketches))`: all three columns, pen bits included (B3)."""
    arr = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1, 3) for s in sketches])
    if arr.size == 0:
        raise DataError("cannot compute a scale factor from an empty training set")
    std = float(arr.std())
    if not np.isfinite(std) or std <= 0:
        raise DataError(f"scale factor is {std}: every value in the training set is identical")
    return std


def decode_pen(logits: torch.Tensor, pen_break: float = 0.5) -> torch.Tensor:
    """Pen lifted (1.0) where P(lift) = softmax(logits)[..., 1] >= pen_break (spec 5.5).

    The original thresholded the raw class-0 logit instead (B1); this is the corrected rule.
    """
    return (torch.softmax(logits.float(), dim=-1)[..., 1] >= pen_break).float()


class SketchKnitter(SketchModel):
    name = "sketchknitter"
    Config = Config

    def __init__(self, config: Config | None = None):
        super().__init__(config or Config())
        cfg = self.config
        if cfg.num_points < 1:
            raise ConfigError(f"num_points must be >= 1, got {cfg.num_points}")
        self.diffusion = GaussianDiffusion.named(cfg.noise_schedule, cfg.diffusion_steps)
        self.unet = UNet1D(
            num_points=cfg.num_points, in_features=2 if cfg.faithful else 3,
            model_channels=cfg.model_channels, lift_dim=cfg.lift_dim,
            channel_mult=tuple(cfg.channel_mult), num_res_blocks=cfg.num_res_blocks,
            num_heads=cfg.num_heads, dropout=cfg.dropout, layout=cfg.layout)
        self.ema = EMA(self.unet, cfg.ema_rate, cfg.ema_warmup)
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

    def keep_sketch(self, sketch: np.ndarray) -> bool:
        """The original's filter: 0 < L <= N (longer sketches are dropped, not truncated)."""
        return 0 < len(sketch) <= self.config.num_points

    @classmethod
    def filter_sketches(cls, config, sketches):
        """The original's `purify`: keep 0 < L <= num_points (the 96 is the UNet's channels)."""
        return clip_and_limit(sketches, config.num_points)

    @classmethod
    def compute_scale_factor(cls, config, train_sketches: Sequence[np.ndarray]) -> float:
        """The offset scale for this mode (faithful: pen column included, B3)."""
        if config.faithful:
            return faithful_scale_factor(train_sketches)
        return xy_scale_factor(train_sketches)

    @classmethod
    def adapt_config(cls, config, splits):
        """Fill in the data bound of clip_x0="auto" (clean mode) from the normalised train split."""
        if config.clip_x0 != "auto" or config.faithful or "train" not in splits:
            return config
        pts = splits["train"].points
        if len(pts) == 0:
            return config
        return dataclasses.replace(config, clip_x0=round(float(np.abs(pts[:, :2]).max()), 4))

    def setup_from_data(self, data) -> None:
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
    def _denoiser(self, net: nn.Module):
        """(x_t, original timesteps, mask) -> (eps, pen logits) for the UNet `net`."""
        faithful = self.config.faithful
        scale = self.diffusion.scale_timesteps

        def denoise(x, t, mask):
            inp = x if faithful else torch.cat([x, mask[..., None].to(x.dtype)], dim=-1)
            return net(inp, scale(t))
        return denoise

    def _loss_mask(self, valid: torch.Tensor) -> torch.Tensor:
        # Faithful: every row, padding included, is data (spec 1.4, 4.3).
        return torch.ones_like(valid) if self.config.faithful else valid

    def loss(self, batch: dict, step: int = 0, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """mean over sketches of mse(eps, eps_hat) over real rows + 0.01 * CE(pen) (spec 4.3).

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
        eps, logits = self._denoiser(self.unet)(x_t, t, m)
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

    def make_sampler(self, sampler: str | Sampler | None = None, steps=None, spacing=None,
                     eta: float = 0.0, max_timestep: int | None = None) -> Sampler:
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
                raise ConfigError("r-Shortcut needs a recognizability curve: run "
                                  "sketchlab.models.sketchknitter.calibrate_shortcut(model, "
                                  "score_fn) first (it needs a trained classifier)")
            spacing = RecognizabilitySpacing(self.shortcut_curve.cpu().numpy())
            steps = 30 if steps is None else steps
        s = make_sampler(name, self.diffusion, clip_x0=c.clip, eta=eta)
        s.set_timesteps(steps, spacing or c.spacing, max_timestep=max_timestep)
        return s

    def _net(self, use_ema: bool | None) -> nn.Module:
        use_ema = self.config.use_ema if use_ema is None else use_ema
        return self.ema.module if use_ema else self.unet

    def _runner(self, net: nn.Module, batch: int, device: torch.device, compile: bool,
                dtype: torch.dtype):
        """The bf16 + CUDA-graph step for `net`, cached per (net, batch, device, clip, dtype)."""
        key = (id(net), batch, str(device), self.config.clip, compile, dtype)
        entry = self._fast_cache.get(key)
        if entry is None:
            shadow = bf16_shadow(net, dtype)
            # compile: True (inductor's default mode) or a mode name ("max-autotune-no-cudagraphs";
            # the step is captured as a CUDA graph here, so not "reduce-overhead"/"max-autotune")
            mode = compile if isinstance(compile, str) else None
            fn = torch.compile(shadow, dynamic=False, mode=mode) if compile else shadow
            runner = StepRunner(self._denoiser(fn), (batch, self.config.num_points, 2), device,
                                self.config.clip, use_graph=device.type == "cuda")
            entry = self._fast_cache[key] = (shadow, runner)
        shadow, runner = entry
        sync_shadow(shadow, net)
        return runner

    def _draw_lengths(self, n: int, generator) -> np.ndarray:
        if self.config.faithful:
            return np.full(n, self.config.num_points, np.int64)
        counts = self.length_counts.detach().cpu().double()
        if counts.sum() <= 0:
            raise ConfigError("the model has no length distribution (it was never trained); "
                              "pass lengths= or call set_data_stats(scale, lengths)")
        g = generator if generator is not None and generator.device.type == "cpu" else None
        return torch.multinomial(counts / counts.sum(), n, replacement=True, generator=g).numpy()

    @torch.no_grad()
    def generate(self, n: int | None = None, *, sampler: str | Sampler | None = None, steps=None,
                 spacing=None, eta: float = 0.0, temperature: float | None = 1.0, batch_size: int = 256,
                 device=None, generator: torch.Generator | None = None, fast: bool | None = None,
                 compile: bool | str = False, fast_dtype: torch.dtype | None = None,
                 use_ema: bool | None = None, pen_break: float | None = None,
                 lengths: Sequence[int] | None = None, condition: Sketches | Sequence | None = None,
                 strength: float = 0.5, extra_points: int = 0,
                 callback: StepCallback | None = None, progress: bool = False,
                 references: Sketches | None = None, seed: int | None = None) -> Sketches:
        """Sample `n` sketches, or refine/heal the sketches in `condition` (SDEdit).

        sampler: "ddpm" (ancestral, T steps unless `steps`), "ddim" (eta 0 by default),
        "rshortcut" (DDIM on the recognizability schedule, S=30 by default), or a Sampler.
        steps / spacing: how many steps and how they are spread ("ddim" stride as the original's
        "ddimK", "even", "linear" = range(0, T, T//S), "quadratic"), or an explicit list.
        temperature scales the initial and the injected noise. fast (default: on CUDA) runs a
        `fast_dtype` copy of the weights (default bf16 on CUDA, fp32 on CPU, which has no fast
        bf16), each step on static buffers, captured as a CUDA graph on CUDA (`compile` adds
        torch.compile). condition: sketches in the model's normalised units (or any units with
        their `scale_factor` set) noised to t0 = strength * T, then denoised; their lengths are
        kept (+ `extra_points` free rows in the default mode). callback(i, t, x_prev, x0_hat,
        eps_hat, pen_logits) sees every step (the buffers are reused: clone what you keep).

        `references` (what `sketchlab sample --condition-on` passes) is `condition`; `seed` seeds a
        generator when none is given.

        Returns stroke-3 sketches in the data's normalised units, `scale_factor` set.
        """
        c = self.config
        if references is not None:
            if condition is not None:
                raise ConfigError("give condition or references, not both")
            condition = references
            if n is not None:
                condition = condition[np.arange(min(int(n), len(condition)))]
                n = None
        if batch_size is None:
            batch_size = 256
        if temperature is None:
            temperature = 1.0
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        if device is None:
            device = self.data_scale.device
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        fast = device.type == "cuda" if fast is None else fast
        if fast_dtype is None:
            fast_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        pen_break = c.pen_break if pen_break is None else pen_break
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}")
        net = self._net(use_ema)

        if condition is not None:
            x_c, pen_c, lengths_arr, t0 = self._prepare_condition(condition, strength, extra_points)
            if t0 < 0:  # strength 0: nothing to refine
                return self._to_sketches(x_c, pen_c, lengths_arr)
            smp = self.make_sampler(sampler, steps, spacing, eta, max_timestep=t0)
            n = len(lengths_arr)
        else:
            if n is None or n < 1:
                raise ConfigError(f"generate: n must be >= 1, got {n}")
            lengths_arr = (np.asarray(lengths, dtype=np.int64) if lengths is not None
                           else self._draw_lengths(n, generator))
            if len(lengths_arr) != n or lengths_arr.min() < 1 or lengths_arr.max() > c.num_points:
                raise ConfigError(f"lengths must be {n} values in [1, {c.num_points}]")
            x_c = None
            smp = self.make_sampler(sampler, steps, spacing, eta)
        t_start = smp.timesteps[0]

        outs, pens = [], []
        runner = self._runner(net, batch_size, device, compile, fast_dtype) if fast else None
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            rows = batch_size if runner is not None else hi - lo
            mask = torch.zeros(rows, c.num_points, device=device)
            mask[:hi - lo] = _length_mask(lengths_arr[lo:hi], c.num_points).to(device)
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
            if runner is not None:
                x0, pen = runner.run(smp, x, mask, generator, temperature, callback, progress,
                                     rows=hi - lo)
            else:
                x0, pen = reverse_loop(self._denoiser(net), smp, x, mask, generator, temperature,
                                       callback, progress)
            outs.append(x0[:hi - lo].float().cpu())
            pens.append(pen[:hi - lo].float().cpu())
        return self._to_sketches(torch.cat(outs), decode_pen(torch.cat(pens), pen_break),
                                 lengths_arr)

    def refine(self, sketches, strength: float = 0.5, **kwargs) -> Sketches:
        """Refine or heal sketches (SDEdit); see `generate(condition=...)`."""
        return self.generate(condition=sketches, strength=strength, **kwargs)

    def _prepare_condition(self, condition, strength: float, extra_points: int):
        c = self.config
        if not 0.0 <= strength <= 1.0:
            raise ConfigError(f"strength must lie in [0, 1], got {strength}")
        if isinstance(condition, Sketches):
            scale_in = condition.scale_factor
            items = list(condition)
        else:
            scale_in, items = float(self.scale_factor), list(condition)
        if not items:
            raise DataError("condition: no sketches given")
        # Sketches.scale_factor: offsets are in units of 1/scale of the raw data.
        ratio = scale_in / float(self.scale_factor)
        x_c = torch.zeros(len(items), c.num_points, 2)
        pen = torch.zeros(len(items), c.num_points)
        lengths = np.zeros(len(items), np.int64)
        for i, s in enumerate(items):
            s = validate_stroke3(s, f"condition sketch {i}")
            if len(s) > c.num_points:
                raise DataError(f"condition sketch {i} has {len(s)} points; this model takes at "
                                f"most {c.num_points} (simplify it with sketchlab.data.strokes."
                                f"simplify or drop it)")
            x_c[i, :len(s)] = torch.from_numpy(s[:, :2] * ratio)
            pen[i, :len(s)] = torch.from_numpy(s[:, 2])
            lengths[i] = c.num_points if c.faithful else min(len(s) + extra_points, c.num_points)
        t0 = int(round(strength * self.diffusion.num_timesteps)) - 1
        return x_c, pen, lengths, min(t0, self.diffusion.num_timesteps - 1)

    def _to_sketches(self, x: torch.Tensor, pen: torch.Tensor, lengths: np.ndarray) -> Sketches:
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
        _, _, middle = net(inp, self.diffusion.scale_timesteps(tt), return_features=True)
        return middle.float().mean(-1)


def _length_mask(lengths: np.ndarray, n: int) -> torch.Tensor:
    return (torch.arange(n)[None, :] < torch.as_tensor(lengths)[:, None]).float()


def _randn(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    dev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=dev).to(device)


# --------------------------------------------------------------------------------------------
# Recognizability and the r-Shortcut (spec 6.3, option A; reconstructed: the original's code
# never trained its predictor, and the paper's shortcut function is not in the repository)
# --------------------------------------------------------------------------------------------

ScoreFn = Callable[[Sketches], np.ndarray]


class RecognizabilityNet(nn.Module):
    """R_phi(x_t, t) -> logit of recognizability: a bi-GRU over the points.

    Per point: (dx, dy), predicted P(pen lift), the real-row mask and a sinusoidal embedding of
    t; the outputs are mean-pooled over real rows, then an MLP gives one logit.
    """

    def __init__(self, hidden: int = 256, layers: int = 2, t_dim: int = 64):
        super().__init__()
        self.t_dim = t_dim
        self.gru = nn.GRU(4 + t_dim, hidden, layers, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x, p_lift, mask, t_scaled):
        b, n, _ = x.shape
        temb = timestep_embedding(t_scaled, self.t_dim)[:, None].expand(b, n, self.t_dim)
        feats = torch.cat([x, p_lift[..., None], mask[..., None], temb], dim=-1)
        lengths = mask.sum(1).clamp_min(1).long().cpu()
        packed = nn.utils.rnn.pack_padded_sequence(feats, lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=n)
        pooled = (out * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return self.head(pooled).squeeze(-1)


def _walk_trajectories(model: SketchKnitter, visit, *, n: int, batch_size: int, sampler: str,
                       steps, record: int | None, target_on: str, device, generator, fast,
                       progress: bool) -> None:
    """Sample `n` sketches and call `visit(x, p_lift, mask, lengths, t)` at `record` evenly
    spread steps (None: every step) with the step's *input* x_t (`target_on="x_t"`, skipping
    the pure-noise first step) or its x0_hat, and that step's pen probabilities."""
    if target_on not in ("x_t", "x0_hat"):
        raise ConfigError(f"target_on must be 'x_t' or 'x0_hat', got {target_on!r}")
    smp = model.make_sampler(sampler, steps)
    first = 1 if target_on == "x_t" else 0
    count = len(smp.timesteps)
    picks = range(first, count) if record is None else np.linspace(first, count - 1, record)
    keep = set(np.round(np.asarray(picks)).astype(int).tolist())
    for lo in range(0, n, batch_size):
        b = min(batch_size, n - lo)
        lengths = model._draw_lengths(b, generator)
        mask = _length_mask(lengths, model.config.num_points).to(device)
        if model.config.faithful:
            mask.fill_(1.0)
        state: dict = {}

        def cb(i, t, x_prev, x0, eps, pen):
            if i in keep:
                src = state["x_in"] if target_on == "x_t" else x0
                visit(src, torch.softmax(pen.float(), -1)[..., 1], mask, lengths, t)
            if i + 1 in keep and target_on == "x_t":
                state["x_in"] = x_prev.clone()  # the input of the next step

        model.generate(b, sampler=smp, lengths=lengths, generator=generator, device=device,
                       batch_size=b, fast=fast, callback=cb, progress=progress)


def train_recognizability(model: SketchKnitter, score_fn: ScoreFn, *, n_sketches: int = 512,
                          batch_size: int = 256, trajectory_sampler: str = "ddpm",
                          trajectory_steps=None, record_steps: int = 50, target_on: str = "x_t",
                          epochs: int = 10, lr: float = 1e-3, device=None,
                          generator: torch.Generator | None = None, fast: bool | None = None,
                          progress: bool = False):
    """Train R_phi on (x_t, t, score) tuples collected along the model's sampling trajectories.

    `score_fn(Sketches) -> (n,)` gives each sketch's recognizability in [0, 1], e.g. a
    classifier's probability of the true class (the original used one batch-level accuracy; a
    per-sketch probability is a stronger target). `target_on="x_t"` scores the current noisy
    sample as the original did; "x0_hat" scores the model's current estimate of the result.
    Returns (predictor, info) with the BCE history.
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else model.data_scale.device
    feats, probs, masks, ts, targets = [], [], [], [], []

    def visit(x, p, mask, lengths, t):
        pen = (p >= model.config.pen_break).float()
        score = np.asarray(score_fn(model._to_sketches(x, pen, lengths)), dtype=np.float32)
        if score.shape != (x.shape[0],) or not np.all(np.isfinite(score)):
            raise ConfigError(f"score_fn must return {x.shape[0]} finite scores, got "
                              f"shape {score.shape}")
        feats.append(x.float().cpu())
        probs.append(p.cpu())
        masks.append(mask.cpu())
        ts.append(torch.full((x.shape[0],), float(t)))
        targets.append(torch.from_numpy(np.clip(score, 0.0, 1.0)))

    _walk_trajectories(model, visit, n=n_sketches, batch_size=batch_size,
                       sampler=trajectory_sampler, steps=trajectory_steps, record=record_steps,
                       target_on=target_on, device=device, generator=generator, fast=fast,
                       progress=progress)
    data = [torch.cat(a) for a in (feats, probs, masks, ts, targets)]
    c = model.config
    net = RecognizabilityNet(c.recognizer_hidden, c.recognizer_layers).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    total = len(data[0])
    g = torch.Generator().manual_seed(0)
    history = []
    for _ in tqdm(range(epochs), disable=not progress, desc="recognizer"):
        order = torch.randperm(total, generator=g)
        run = 0.0
        for lo in range(0, total, batch_size):
            idx = order[lo:lo + batch_size]
            x, p, m, t, y = (d[idx].to(device) for d in data)
            logit = net(x, p, m, model.diffusion.scale_timesteps(t))
            loss = F.binary_cross_entropy_with_logits(logit, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run += loss.item() * len(idx)
        history.append(run / total)
    return net.eval(), {"tuples": total, "bce": history,
                        "mean_target": float(data[4].mean())}


@torch.no_grad()
def recognizability_curve(model: SketchKnitter, predictor: RecognizabilityNet, *, n: int = 256,
                          batch_size: int = 256, trajectory_sampler: str = "ddpm",
                          trajectory_steps=None, target_on: str = "x_t", device=None,
                          generator: torch.Generator | None = None, fast: bool | None = None,
                          progress: bool = False) -> np.ndarray:
    """Mean predicted recognizability r(t), t = 0..T-1, over a pilot batch of trajectories
    (evaluated at every step of the trajectory sampler, interpolated in between)."""
    device = torch.device(device) if device is not None else model.data_scale.device
    sums: dict[int, list[float]] = {}

    def visit(x, p, mask, lengths, t):
        tt = torch.full((x.shape[0],), float(t), device=x.device)
        r = torch.sigmoid(predictor(x.float(), p, mask, model.diffusion.scale_timesteps(tt)))
        sums.setdefault(int(t), []).extend(r.float().cpu().tolist())

    _walk_trajectories(model, visit, n=n, batch_size=batch_size, sampler=trajectory_sampler,
                       steps=trajectory_steps, record=None, target_on=target_on, device=device,
                       generator=generator, fast=fast, progress=progress)
    ts = np.array(sorted(sums))
    means = np.array([np.mean(sums[t]) for t in ts])
    return np.interp(np.arange(model.diffusion.num_timesteps), ts, means)


def calibrate_shortcut(model: SketchKnitter, score_fn: ScoreFn, *, pilot: int = 256, **kwargs):
    """Train R_phi from `score_fn`, estimate r(t) on a pilot batch and store it in the model,
    enabling `generate(sampler="rshortcut", steps=S)`. Returns (predictor, curve, info)."""
    curve_keys = ("batch_size", "trajectory_sampler", "trajectory_steps", "target_on", "device",
                  "generator", "fast", "progress")
    predictor, info = train_recognizability(model, score_fn, **kwargs)
    curve = recognizability_curve(model, predictor, n=pilot,
                                  **{k: v for k, v in kwargs.items() if k in curve_keys})
    model.set_shortcut_curve(curve)
    return predictor, curve, info


def classifier_score_fn(classifier, categories: Sequence[str]) -> ScoreFn:
    """Recognizability targets from a sketchlab classifier: the probability it gives the class
    the model was trained on (the mean over `categories` for a multi-category model). Sketches
    arrive in the model's normalised units; rendering fits each to its box, so units do not
    matter."""
    missing = [c for c in categories if c not in classifier.categories]
    if missing:
        raise ConfigError(f"the classifier does not know {missing}; it knows "
                          f"{', '.join(classifier.categories)}")
    cols = [classifier.categories.index(c) for c in categories]

    def score(sketches: Sketches) -> np.ndarray:
        _, logits = classifier.extract(sketches)
        p = torch.softmax(torch.as_tensor(logits, dtype=torch.float32), -1)
        return p[:, cols].max(-1).values.numpy()
    return score
