"""What every sketchlab model shares: the data hooks the trainer calls and the model interface.

A model is an `nn.Module` with a `Config` dataclass (the paper's defaults, inheriting the training
fields of `sketchlab.config.TrainingConfig`) and these methods:

* `make_batch(sketches, train, rng) -> dict[str, Tensor]`: collate normalised stroke-3 sketches
  (CPU tensors; the trainer moves them), applying the training augmentations when `train`;
* `loss(batch, step) -> dict[str, Tensor]` with `"loss"` the scalar to minimise;
* `on_step_end(step)`: called after the optimiser step (write non-gradient buffers here);
* `encode(batch) -> Tensor` and `generate(...) -> Sketches`.

Data preparation hooks are classmethods because they run before the model exists: the trainer
filters the raw splits, computes the scale factor on the training split, normalises every split,
and lets the model adapt data-dependent settings (e.g. RPCL's max_seq_len = longest sketch).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from sketchlab.data import strokes as S
from sketchlab.data.sketches import Sketches
from sketchlab.errors import DataError


class SketchModel(nn.Module):
    name: ClassVar[str] = "base"
    Config: ClassVar[type]
    # False for models that only redraw or heal reference sketches (no prior to sample z from:
    # SP-gra2seq, SketchGloc); `generate` then needs `references`.
    samples_from_prior: ClassVar[bool] = True

    def __init__(self, config):
        super().__init__()
        self.config = config
        # Offsets the model sees are raw offsets / scale_factor; set from the run's training split
        # (a model may keep it in a buffer behind a `scale_factor` property instead).
        if not isinstance(getattr(type(self), "scale_factor", None), property):
            self.scale_factor = 1.0

    # ---- data preparation (before the model exists) -----------------------------------------
    @classmethod
    def filter_sketches(cls, config, sketches: Sketches) -> Sketches:
        """Clip raw offsets to +-1000 and drop sketches longer than `config.max_seq_len` (if > 0)."""
        return clip_and_limit(sketches, int(getattr(config, "max_seq_len", 0) or 0))

    @classmethod
    def compute_scale_factor(cls, config, train: Sketches) -> float:
        """The seeds' normaliser: population std of the training split's dx and dy pooled."""
        return S.scale_factor(train)

    @classmethod
    def adapt_config(cls, config, splits: dict[str, Sketches]):
        """Return `config` with data-dependent fields filled in (default: unchanged)."""
        return config

    def setup_from_data(self, data) -> None:
        """Take what the model keeps of its training data (`trainer.PreparedData`) before training."""
        self.scale_factor = data.scale_factor

    # ---- the interface ------------------------------------------------------------------------
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

    def generate(self, *args, **kwargs) -> Sketches:
        raise NotImplementedError

    def decode_codes(self, z: torch.Tensor, *, temperature: float | None = None, seed: int = 0,
                     greedy: bool = False) -> Sketches:
        """Decode latent codes `(N, z_size)` into normalised sketches (latent-variable models)."""
        raise NotImplementedError(f"{self.name} does not decode latent codes")

    def latent_labels(self, z: torch.Tensor) -> dict[str, np.ndarray]:
        """Named discrete labels of codes for latent maps (e.g. {"component": ...}); none by default."""
        return {}

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def sample_options(self) -> dict[str, Any]:
        """Options `sketchlab sample` may pass to `generate` for this model (name -> help)."""
        return {}


def clip_and_limit(sketches: Sketches, max_len: int) -> Sketches:
    """The seeds' raw-data filter: drop empty sketches and those longer than `max_len` (when
    > 0), clip offsets to +-1000."""
    keep = [i for i, n in enumerate(sketches.lengths) if n > 0 and (max_len <= 0 or n <= max_len)]
    out = sketches.select(keep) if len(keep) != len(sketches) else sketches
    pts = out.points.copy()
    pts[:, :2] = np.clip(pts[:, :2], -S.RAW_OFFSET_LIMIT, S.RAW_OFFSET_LIMIT)
    return Sketches(pts, out.offsets, category=out.category, category_names=out.category_names,
                    z=out.z, component=out.component, scale_factor=out.scale_factor)
