"""Sketch-a-Net (Yu et al., BMVC 2015 / IJCV 2017): the judge behind Rec, and sketchlab's default
feature extractor for FID, IS, precision/recall and the Geometry Score.

A normal sketchlab model: trained by the model-agnostic `Trainer` (`sketchlab classifier train`
or `sketchlab train sketch-a-net`), stored as a normal run directory, loaded as a judge by
`sketchlab.runs.load_judge`. Reads top to bottom: config, network, input pipeline, loss. From
Python:

    data = prepare_data(SketchANet, Config(width=0.5), load_splits("data/spg20", ["cat", "bus"]))
    Trainer(SketchANet(data.config), data, "runs/clf", max_epochs=30).train()
    judge = sketchlab.runs.load_judge("runs/clf")       # -> eval.judge.SketchANetFeatures

The network is the single-channel, single-scale Sketch-a-Net: five convolutions and three
convolutional "FC" layers, ReLU after all but the last, dropout 0.5 after L6 and L7, no batch norm,
no LRN (the papers' Table 1). The output of L7 (512-d at full width) is the feature vector.
`width` scales every layer's channels (0.5 keeps a quarter of the 8.4M weights: 4.2 MB as fp16).

Input pipeline (the papers leave it open; this is sketchlab's choice, saved in each run's config
and reused for every sketch the judge scores):
* render each stroke-3 sketch at 256 x 256 with `sketchlab.data.raster` (anti-aliased, the whole
  sketch fitted inside a 20 px margin, lines 3 px wide: any units give the same picture), on the
  device that runs the network;
* training: the sketch-rnn seeds' stroke augmentations (independent x/y stretch of +-10 %, point
  dropping with probability 0.1), then a random 225 x 225 crop and a horizontal flip with
  probability 1/2 (Sketch-a-Net's own augmentation); evaluation: the centre 225 x 225 crop;
* values `1 - grey/255`: ink is 1, paper is 0 (so zero padding is blank paper).

The categories are the training data's (one output per category, in the run's order); the trainer
gives every batch its sketches' category indices (`batch["category"]`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sketchlab.config import TrainingConfig
from sketchlab.data import raster
from sketchlab.data import strokes as S
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError, DataError
from sketchlab.models.base import SketchModel


@dataclass
class Config(TrainingConfig):
    num_classes: int = 0            # set from the training data's categories (adapt_config)
    width: float = 1.0              # channel multiplier: 1.0 is the paper's network (33 MB fp32)
    input_size: int = 225           # side of Sketch-a-Net's input image (px)
    render_size: int = 256          # render, then crop 225 (random in training, centre otherwise)
    margin: float = 20.0            # px around the sketch in the 256 render: centre crop keeps it all
    line_width: float = 3.0         # stroke width (px at 256)
    dropout: float = 0.5                 # dropout probability of the fully connected layers
    stretch: float = 0.1            # random_scale factor (sketch-rnn seeds: 0.1)
    drop_prob: float = 0.1          # augment_strokes probability (sketch-rnn seeds: 0.1)
    flip: bool = True               # random horizontal flips in training
    # training: Adam with L2 weight decay, no clipping, every epoch validated, the most accurate
    # checkpoint kept (error = 1 - accuracy), no early stopping
    batch_size: int = 128
    learning_rate: float = 5e-4
    weight_decay: float = 5e-4
    clip_mode: str = "none"
    patience: int = 0
    valid_metric: str = "error"


def _channels(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


class SketchANet(SketchModel):
    """Single-channel Sketch-a-Net: `(B, 1, 225, 225)` -> logits over `num_classes`."""

    name = "sketch-a-net"
    Config = Config
    samples_from_prior = False      # a classifier: it draws nothing

    def __init__(self, config: Config):
        super().__init__(config)
        c = config
        if c.num_classes < 1:
            raise ConfigError(f"num_classes={c.num_classes}: it comes from the data's categories "
                              f"(prepare_data fills it in), or give it for an untrained network")
        if not c.width > 0:
            raise ConfigError(f"width={c.width}: the channel multiplier must be > 0")
        if c.render_size < c.input_size:
            raise ConfigError(f"render_size {c.render_size} must be >= input_size {c.input_size}")
        c64, c128, c256, c512 = (_channels(n, c.width) for n in (64, 128, 256, 512))
        self.features = nn.Sequential(
            nn.Conv2d(1, c64, 15, stride=3), nn.ReLU(inplace=True),         # L1 71x71
            nn.MaxPool2d(3, 2),                                              #    35x35
            nn.Conv2d(c64, c128, 5), nn.ReLU(inplace=True),                  # L2 31x31
            nn.MaxPool2d(3, 2),                                              #    15x15
            nn.Conv2d(c128, c256, 3, padding=1), nn.ReLU(inplace=True),      # L3 15x15
            nn.Conv2d(c256, c256, 3, padding=1), nn.ReLU(inplace=True),      # L4 15x15
            nn.Conv2d(c256, c256, 3, padding=1), nn.ReLU(inplace=True),      # L5 15x15
            nn.MaxPool2d(3, 2),                                              #    7x7
        )
        self.fc6 = nn.Conv2d(c256, c512, 7)                                  # L6 1x1
        self.fc7 = nn.Conv2d(c512, c512, 1)                                  # L7 1x1
        self.fc8 = nn.Conv2d(c512, c.num_classes, 1)                         # L8 1x1
        self.dropout = nn.Dropout(c.dropout)
        # He init keeps the activations' scale through eight ReLU layers without batch norm.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc8.weight, std=0.01)
        self.categories: tuple[str, ...] = ()

    # ---- data preparation -----------------------------------------------------------------------
    @classmethod
    def adapt_config(cls, config: Config, splits: dict[str, Sketches]) -> Config:
        """One output per category of the training split."""
        return replace(config, num_classes=max(1, len(splits["train"].category_names)))

    def setup_from_data(self, data) -> None:
        super().setup_from_data(data)
        self.categories = tuple(data.categories)

    @property
    def feature_dim(self) -> int:
        return self.fc7.out_channels

    # ---- the network ----------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The L7 activations `(B, feature_dim)` (after ReLU; dropout only in training mode)."""
        h = self.features(x)
        h = self.dropout(F.relu(self.fc6(h)))
        return self.dropout(F.relu(self.fc7(h))).flatten(1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """L8: features `(B, feature_dim)` -> logits `(B, num_classes)`."""
        return self.fc8(features[:, :, None, None]).flatten(1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    # ---- input pipeline -------------------------------------------------------------------------
    def make_batch(self, sketches: list[np.ndarray], train: bool,
                   rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
        """Padded stroke-3 sketches (stretched and thinned when training) and, when training, each
        image's crop window and flip, all drawn from `rng`. Rendering happens on the device."""
        c = self.config
        if train:
            sketches = [self._augment(s, rng) for s in sketches]
        strokes, lengths = raster.pad_strokes(sketches)
        batch = {"strokes": strokes, "lengths": lengths}
        if train:
            n = len(sketches)
            batch["crop"] = torch.from_numpy(
                rng.integers(0, c.render_size - c.input_size + 1, size=(n, 2)))
            flips = rng.random(n) < 0.5 if c.flip else np.zeros(n, bool)
            batch["flip"] = torch.from_numpy(flips)
        return batch

    def _augment(self, sketch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        s = S.random_scale(sketch, c.stretch, rng) if c.stretch > 0 else sketch
        return S.augment_strokes(s, c.drop_prob, rng) if c.drop_prob > 0 else s

    def images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The network input `(B, 1, 225, 225)`, ink 1 on paper 0, rendered on the batch's device
        (a precomputed `batch["image"]` is used as is)."""
        if "image" in batch:
            return batch["image"]
        c = self.config
        strokes = batch["strokes"]
        with torch.autocast(strokes.device.type, enabled=False):
            grey = raster.rasterize_batch(strokes, batch["lengths"], size=c.render_size,
                                          margin=c.margin, line_width=c.line_width)
            return crop(1.0 - grey / 255.0, c.input_size, batch.get("crop"),
                        batch.get("flip"))[:, None]

    def prepare_step(self, batch):
        """Render the training images before the step, outside autocast and any graph."""
        batch["image"] = self.images(batch)
        return batch

    @torch.no_grad()
    def render(self, sketches: Sequence[np.ndarray]) -> torch.Tensor:
        """Stroke-3 sketches (any units) -> the evaluation input `(B, 1, 225, 225)` on the model's
        device: the centre crop, no augmentation."""
        strokes, lengths = raster.pad_strokes(list(sketches))
        return self.images({"strokes": strokes.to(self.device), "lengths": lengths.to(self.device)})

    # ---- loss -----------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        """Cross-entropy (`loss`), with the batch's accuracy and error (1 - accuracy)."""
        logits = self.logits(self.images(batch)).float()
        target = self._targets(batch, len(logits), logits.device)
        xent = F.cross_entropy(logits, target)
        accuracy = (logits.argmax(1) == target).float().mean()
        return {"loss": xent, "accuracy": accuracy, "error": 1.0 - accuracy}

    def _targets(self, batch, n: int, device: torch.device) -> torch.Tensor:
        if "category" in batch:
            return batch["category"].to(device=device, dtype=torch.long)
        if self.config.num_classes == 1:
            return torch.zeros(n, dtype=torch.long, device=device)
        raise DataError(f"{self.name} learns categories: its batches need `category` (the "
                        f"trainer adds it when the data's sketches carry categories)")

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The L7 features: Sketch-a-Net's code for a sketch."""
        return self.embed(self.images(batch))

    def generate(self, *args, **kwargs) -> Sketches:
        raise ConfigError(f"{self.name} is a classifier (the evaluation's judge) and draws "
                          f"nothing; pass its run to `sketchlab evaluate --classifier`")


def crop(images: torch.Tensor, size: int, offsets: torch.Tensor | None = None,
         flips: torch.Tensor | None = None) -> torch.Tensor:
    """Crop `(B, S, S)` to `(B, size, size)`: the centre when `offsets` is None, else the window
    at each image's `(row, column)` offset, mirrored left-right where `flips`, in one gather."""
    b, s = images.shape[0], images.shape[-1]
    if offsets is None:
        o = (s - size) // 2
        return images[:, o:o + size, o:o + size]
    dev = images.device
    ar = torch.arange(size, device=dev)
    offsets = offsets.to(dev)
    rows, cols = offsets[:, :1] + ar, offsets[:, 1:2] + ar
    if flips is not None:
        cols = torch.where(flips.to(dev)[:, None], cols.flip(1), cols)
    return images[torch.arange(b, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]


# ---- presets (`sketchlab train sketch-a-net --preset ...`) ----------------------------------
# The judge has no category list of its own: it learns whatever categories it is given.
PAPER_CATEGORIES: tuple[str, ...] = ()


def paper_config(**overrides) -> Config:
    """The papers' network at full width (8.4M weights), float32 everywhere (`amp=False`); the
    input pipeline and the training settings are sketchlab's (the papers do not give them)."""
    return replace(Config(width=1.0, amp=False), **overrides)


def cpu_config(**overrides) -> Config:
    """A judge that trains in under an hour on 2 CPU cores: half width (a quarter of the weights),
    batch 64, 1,500 steps at 1.5 s of one core each, validation on 20 batches every 250 steps."""
    return replace(Config(width=0.5, batch_size=64, max_steps=1500, eval_every=250,
                          max_valid_batches=20), **overrides)


__all__ = ["Config", "PAPER_CATEGORIES", "SketchANet", "cpu_config", "crop", "paper_config"]
