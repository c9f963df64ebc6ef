"""Sketch-a-Net (Yu et al., BMVC 2015 / IJCV 2017): the judge behind Rec, and sketchlab's default
feature extractor for FID, IS, precision/recall and the Geometry Score.

The architecture is the single-channel, single-scale network of spec
sketchknitter-and-metrics.md section 15: five convolutions and three convolutional "FC" layers,
ReLU after all but the last, dropout 0.5 after L6 and L7, no batch norm, no LRN. The 512-d output
of L7 is the feature vector.

Input pipeline (the papers leave it open, rpcl-pix2seq.md 8.2 [AMBIG]; this is sketchlab's choice,
saved in each classifier's config.json and reused for every sketch it judges):
* render each stroke-3 sketch at 256 x 256 with `sketchlab.data.raster` (anti-aliased, the whole
  sketch fitted inside a 20 px margin, lines 3 px wide), on the device that runs the network;
* training: the seeds' stroke augmentations (independent x/y stretch of +-10 %, sketch-rnn point
  dropping with probability 0.1), then a random 225 x 225 crop and a horizontal flip with
  probability 1/2 (Sketch-a-Net's own augmentation); evaluation: the centre 225 x 225 crop;
* values `1 - grey/255`: ink is 1, paper is 0 (so zero padding is blank paper).

Numbers computed with these features are "FID_sketch(Sketch-a-Net)" and friends: they are not
comparable with figures computed with the ImageNet Inception-v3. A user with local Inception
weights can evaluate with `sketchlab.eval.inception.InceptionFeatures` instead (`make_extractor`).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from sketchlab import __version__
from sketchlab.data.strokes import augment_strokes, random_scale
from sketchlab.data.sketches import Sketches
from sketchlab.errors import CheckpointError, ConfigError, DataError
from sketchlab.nn.device import pick_device
from sketchlab.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text

MODEL_NAME = "sketch-a-net"


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


@dataclass
class ClassifierConfig:
    """What a trained classifier needs to judge a sketch the way it was trained (saved with it)."""

    categories: tuple[str, ...]
    input_size: int = 225          # Sketch-a-Net's input
    render_size: int = 256         # render, then crop 225 (random in training, centre otherwise)
    margin: float = 20.0           # px around the sketch in the 256 render: centre crop keeps it all
    line_width: float = 3.0        # px at 256
    dropout: float = 0.5
    scale_factor: float = 1.0      # the training data's offset scale (informative: renders are
                                   # scale-invariant)

    def __post_init__(self):
        self.categories = tuple(str(c) for c in self.categories)
        if not self.categories:
            raise ConfigError("a classifier needs at least one category")
        if len(set(self.categories)) != len(self.categories):
            raise ConfigError(f"duplicate categories in {list(self.categories)}")
        if self.render_size < self.input_size:
            raise ConfigError(f"render_size {self.render_size} must be >= input_size {self.input_size}")


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 5e-4               # Adam; linear warm-up over the first epoch, cosine decay to 0
    weight_decay: float = 5e-4
    stretch: float = 0.1           # random_scale factor (seeds: 0.1)
    drop_prob: float = 0.1         # augment_strokes probability (seeds: 0.1)
    flip: bool = True
    amp: bool = True               # bf16 autocast on CUDA (ignored on CPU)
    eval_batch_size: int = 256
    seed: int = 0
    max_steps: int | None = None   # stop early (tests, smoke runs)


def _dataclass_from_dict(cls, d: dict, where: str):
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise CheckpointError(f"{where}: unknown {cls.__name__} fields {sorted(unknown)} (written "
                              f"by a newer sketchlab?)")
    return cls(**d)


# ------------------------------------------------------------------------------------------------
# The network
# ------------------------------------------------------------------------------------------------


class SketchANet(nn.Module):
    """Single-channel Sketch-a-Net: 225 x 225 x 1 -> logits over `num_classes`."""

    feature_dim = 512

    def __init__(self, num_classes: int, in_channels: int = 1, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 15, stride=3), nn.ReLU(inplace=True),   # L1 71x71
            nn.MaxPool2d(3, 2),                                                 #    35x35
            nn.Conv2d(64, 128, 5), nn.ReLU(inplace=True),                       # L2 31x31
            nn.MaxPool2d(3, 2),                                                 #    15x15
            nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(inplace=True),           # L3 15x15
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),           # L4 15x15
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),           # L5 15x15
            nn.MaxPool2d(3, 2),                                                 #    7x7
        )
        self.fc6 = nn.Conv2d(256, 512, 7)                                       # L6 1x1
        self.fc7 = nn.Conv2d(512, 512, 1)                                       # L7 1x1
        self.fc8 = nn.Conv2d(512, num_classes, 1)                               # L8 1x1
        self.dropout = nn.Dropout(dropout)
        # He init keeps the activations' scale through eight ReLU layers without batch norm.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc8.weight, std=0.01)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The L7 activations `(B, 512)` (after ReLU; dropout only in training mode)."""
        h = self.features(x)
        h = self.dropout(F.relu(self.fc6(h)))
        return self.dropout(F.relu(self.fc7(h))).flatten(1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc8(features[:, :, None, None]).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


# ------------------------------------------------------------------------------------------------
# Rendering (the one place that calls the rasterizer)
# ------------------------------------------------------------------------------------------------


def _render(sketches: Sequence[np.ndarray], size: int, margin: float, line_width: float,
            device: torch.device) -> torch.Tensor:
    """Grey levels `(B, size, size)` float32 in [0, 255] (paper 255, ink 0) on `device`.

    Uses `sketchlab.data.raster`: its torch twin on CUDA, its CPU rasterizer elsewhere.
    """
    from sketchlab.data import raster

    sketches = [s if len(s) else np.array([[0.0, 0.0, 1.0]], np.float32) for s in sketches]
    if device.type == "cuda":
        lengths = torch.tensor([len(s) for s in sketches], dtype=torch.int64)
        padded = torch.zeros(len(sketches), int(lengths.max()), 3)
        for i, s in enumerate(sketches):
            padded[i, :len(s)] = torch.from_numpy(np.asarray(s, np.float32))
        return raster.rasterize_torch(padded.to(device), lengths.to(device), size=size,
                                      margin=margin, line_width=line_width).float()
    grey = raster.rasterize(list(sketches), size=size, margin=margin, line_width=line_width)
    return torch.from_numpy(np.asarray(grey)).to(device=device, dtype=torch.float32)


def crop(images: torch.Tensor, size: int, generator: torch.Generator | None = None,
         flip: bool = False) -> torch.Tensor:
    """Crop `(B, S, S)` to `(B, size, size)`: the centre without a generator, else a random
    window per image (and a random horizontal flip when `flip`), in one gather."""
    b, s = images.shape[0], images.shape[-1]
    if generator is None:
        o = (s - size) // 2
        return images[:, o:o + size, o:o + size]
    oy, ox = torch.randint(0, s - size + 1, (2, b), generator=generator)
    ar = torch.arange(size)
    rows, cols = oy[:, None] + ar, ox[:, None] + ar
    if flip:
        flipped = torch.rand(b, generator=generator) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    dev = images.device
    return images[torch.arange(b, device=dev)[:, None, None], rows.to(dev)[:, :, None],
                  cols.to(dev)[:, None, :]]


def classifier_images(sketches: Sequence[np.ndarray], config: ClassifierConfig,
                      device: torch.device, generator: torch.Generator | None = None,
                      flip: bool = False) -> torch.Tensor:
    """Stroke-3 sketches -> network input `(B, 1, 225, 225)`, ink 1 on paper 0."""
    grey = _render(sketches, config.render_size, config.margin, config.line_width, device)
    return crop(1.0 - grey / 255.0, config.input_size, generator, flip)[:, None]


# ------------------------------------------------------------------------------------------------
# Feature extractors
# ------------------------------------------------------------------------------------------------


class FeatureExtractor:
    """What the feature-based metrics need from a network.

    `images(sketches)` renders stroke-3 sketches the way the network expects;
    `features_and_logits(images)` returns `(N, D)` features and `(N, C)` logits (or None);
    `features` and `logits` are the two halves; `extract(sketches)` does it all in batches.
    """

    name = "extractor"
    device = torch.device("cpu")
    batch_size = 256

    def images(self, sketches: Sequence[np.ndarray]) -> torch.Tensor:
        raise NotImplementedError

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[0]

    def logits(self, images: torch.Tensor) -> torch.Tensor | None:
        return self.features_and_logits(images)[1]

    @torch.inference_mode()
    def extract(self, sketches: Sketches | Sequence[np.ndarray], progress: bool = False,
                desc: str = "features") -> tuple[np.ndarray, np.ndarray | None]:
        """Features (float32 `(N, D)`) and logits (float32 `(N, C)` or None) of every sketch."""
        items = list(sketches)
        feats, logits = [], []
        for s in tqdm(range(0, len(items), self.batch_size), desc=desc, disable=not progress,
                      leave=False):
            f, lg = self.features_and_logits(self.images(items[s:s + self.batch_size]))
            feats.append(f.float().cpu())
            if lg is not None:
                logits.append(lg.float().cpu())
        if not feats:
            raise DataError("no sketches to extract features from")
        return (torch.cat(feats).numpy(), torch.cat(logits).numpy() if logits else None)


class SketchANetFeatures(FeatureExtractor):
    """A trained Sketch-a-Net as judge (logits -> Rec, IS) and feature extractor (L7, 512-d)."""

    name = MODEL_NAME

    def __init__(self, model: SketchANet, config: ClassifierConfig, device=None,
                 batch_size: int = 256, run_dir: str | os.PathLike | None = None):
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.config = config
        self.batch_size = batch_size
        self.run_dir = Path(run_dir) if run_dir is not None else None

    @property
    def categories(self) -> tuple[str, ...]:
        return self.config.categories

    def images(self, sketches):
        return classifier_images(list(sketches), self.config, self.device)

    def features_and_logits(self, images):
        f = self.model.embed(images)
        return f, self.model.head(f)

    def labels(self, sketches: Sketches, where: str = "sketches") -> np.ndarray:
        """Each sketch's category as an index into this classifier's categories."""
        return category_labels(sketches, self.categories, where)


def category_labels(sketches: Sketches, categories: Sequence[str], where: str) -> np.ndarray:
    """Map `sketches.category` (indices into its own `category_names`) onto `categories`."""
    if sketches.category is None:
        if len(categories) == 1:
            return np.zeros(len(sketches), np.int64)
        raise DataError(f"{where}: sketches carry no category; cannot score them against "
                        f"{len(categories)} categories")
    if not sketches.category_names:
        cat = sketches.category
        if len(cat) and (cat.min() < 0 or cat.max() >= len(categories)):
            raise DataError(f"{where}: category indices outside [0, {len(categories)})")
        return cat.copy()
    lookup = {}
    for i, name in enumerate(sketches.category_names):
        if name in categories:
            lookup[i] = categories.index(name)
    used = np.unique(sketches.category)
    missing = [sketches.category_names[int(i)] for i in used if int(i) not in lookup]
    if missing:
        raise DataError(f"{where}: categories {missing} are not ones the classifier knows "
                        f"({', '.join(categories)}); train a classifier on them or leave them out")
    return np.array([lookup[int(c)] for c in sketches.category], np.int64)


def make_extractor(spec: str | None, classifier: SketchANetFeatures, device=None,
                   batch_size: int = 256) -> FeatureExtractor:
    """`None`/"classifier"/"sketch-a-net": the classifier itself; "inception:PATH": an FID
    Inception-v3 loaded from the local state dict at PATH (never downloaded)."""
    if spec in (None, "", "classifier", MODEL_NAME):
        return classifier
    if spec.startswith("inception:"):
        from sketchlab.eval.inception import InceptionFeatures

        return InceptionFeatures(spec.split(":", 1)[1], device=device or classifier.device,
                                 batch_size=batch_size)
    raise ConfigError(f"unknown feature extractor {spec!r}: use 'classifier' or "
                      f"'inception:/path/to/pt_inception-2015-12-05-6726825d.pth'")


# ------------------------------------------------------------------------------------------------
# Run directory
# ------------------------------------------------------------------------------------------------


def _read_config(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a sketchlab run (no config.json)")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return cfg


def _refuse_other_model(run_dir: Path, cfg: dict) -> None:
    model = cfg.get("model")
    if model != MODEL_NAME:
        raise CheckpointError(f"{run_dir}: this is a run of model {model!r}, not a "
                              f"{MODEL_NAME} classifier; pass the directory written by "
                              f"`sketchlab classifier train`")


def save_classifier(run_dir: str | os.PathLike, model: SketchANet, config: ClassifierConfig,
                    train_config: TrainConfig | None = None, metrics: dict | None = None) -> None:
    """Write `config.json`, `model.safetensors` (and `metrics.json`) atomically."""
    from safetensors.torch import save

    run_dir = Path(run_dir)
    if (run_dir / "config.json").exists():
        _refuse_other_model(run_dir, _read_config(run_dir))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(run_dir / "model.safetensors", save(state))
    cfg = {"model": MODEL_NAME, "kind": "classifier", "sketchlab_version": __version__,
           "classifier": asdict(config), "train": asdict(train_config) if train_config else None}
    atomic_write_json(run_dir / "config.json", cfg)
    if metrics is not None:
        atomic_write_json(run_dir / "metrics.json", metrics)


def load_classifier(run_dir: str | os.PathLike, device=None,
                    batch_size: int = 256) -> SketchANetFeatures:
    """Load a classifier run written by `sketchlab classifier train`, ready to judge sketches."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    cfg = _read_config(run_dir)
    _refuse_other_model(run_dir, cfg)
    try:
        config = _dataclass_from_dict(ClassifierConfig, dict(cfg["classifier"]),
                                      str(run_dir / "config.json"))
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{run_dir / 'config.json'}: bad classifier config ({e})") from e
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{run_dir}: model.safetensors is missing (training not finished?)")
    model = SketchANet(len(config.categories), dropout=config.dropout)
    try:
        model.load_state_dict(load_file(str(weights)))
    except (SafetensorError, RuntimeError, OSError) as e:
        raise CheckpointError(f"{weights}: does not hold this Sketch-a-Net's weights ({e})") from e
    device = torch.device(device) if device is not None else pick_device()
    return SketchANetFeatures(model, config, device, batch_size, run_dir)


def _augment(sketch: np.ndarray, tc: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    s = random_scale(sketch, tc.stretch, rng) if tc.stretch > 0 else sketch
    return augment_strokes(s, tc.drop_prob, rng) if tc.drop_prob > 0 else s


@torch.inference_mode()
def evaluate_accuracy(judge: SketchANetFeatures, sketches: Sketches, labels: np.ndarray,
                      progress: bool = False) -> float:
    was_training = judge.model.training
    judge.model.eval()
    _, logits = judge.extract(sketches, progress=progress, desc="validate")
    judge.model.train(was_training)
    return float(np.mean(logits.argmax(1) == labels))


def _cudnn_autotuned(fn):
    """Run `fn` with `torch.backends.cudnn.benchmark` on and give the caller's setting back after:
    Sketch-a-Net sees one fixed input shape, so autotuning its convolutions pays (on CUDA; the
    flag does nothing on CPU), but that is this training run's choice, not the process's."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            return fn(*args, **kwargs)
        finally:
            torch.backends.cudnn.benchmark = before

    return wrapper


@_cudnn_autotuned
def train_classifier(train: Sketches, valid: Sketches, out_dir: str | os.PathLike,
                     config: ClassifierConfig, train_config: TrainConfig | None = None,
                     device=None, progress: bool = True) -> dict:
    """Train Sketch-a-Net on `train`, keep the checkpoint with the best accuracy on `valid`.

    Writes a run directory (config.json, model.safetensors, metrics.json, log.csv) and returns the
    metrics: per-epoch train loss and validation accuracy, the best epoch and its accuracy.
    """
    tc = train_config or TrainConfig()
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        _refuse_other_model(out_dir, _read_config(out_dir))
    device = torch.device(device) if device is not None else pick_device()
    y_train = category_labels(train, config.categories, "training set")
    y_valid = category_labels(valid, config.categories, "validation set")
    if len(train) == 0 or len(valid) == 0:
        raise DataError(f"empty split: {len(train)} training and {len(valid)} validation sketches")

    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    model = SketchANet(len(config.categories), dropout=config.dropout).to(device)
    judge = SketchANetFeatures(model, config, device, tc.eval_batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = math.ceil(len(train) / tc.batch_size)
    total = steps_per_epoch * tc.epochs
    if tc.max_steps is not None:
        total = min(total, tc.max_steps)
    warmup = min(steps_per_epoch, max(1, total // 10))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    use_amp = tc.amp and device.type == "cuda"
    history, best = [], {"epoch": -1, "valid_accuracy": -1.0}
    step = 0
    bar = tqdm(total=total, desc="classifier", disable=not progress, dynamic_ncols=True)
    t0 = time.time()
    for epoch in range(tc.epochs):
        if step >= total:
            break
        model.train()
        order = rng.permutation(len(train))
        loss_sum, seen = 0.0, 0
        for s in range(0, len(order), tc.batch_size):
            if step >= total:
                break
            idx = order[s:s + tc.batch_size]
            batch = [_augment(train[int(i)], tc, rng) for i in idx]
            x = classifier_images(batch, config, device, generator=gen, flip=tc.flip)
            y = torch.from_numpy(y_train[idx]).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss_sum / seen:.3f}")
        acc = evaluate_accuracy(judge, valid, y_valid)
        row = {"epoch": epoch, "step": step, "train_loss": loss_sum / max(seen, 1),
               "valid_accuracy": acc, "seconds": round(time.time() - t0, 1)}
        history.append(row)
        bar.write(f"epoch {epoch}: train loss {row['train_loss']:.4f}, valid accuracy {acc:.4f}")
        if acc > best["valid_accuracy"]:
            best = {"epoch": epoch, "valid_accuracy": acc}
        metrics = {"best_epoch": best["epoch"], "best_valid_accuracy": best["valid_accuracy"],
                   "n_train": len(train), "n_valid": len(valid), "history": history}
        if best["epoch"] == epoch:
            save_classifier(out_dir, model, config, tc, metrics)
        else:
            atomic_write_json(out_dir / "metrics.json", metrics)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(row))
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(out_dir / "log.csv", buf.getvalue())
    bar.close()
    return metrics
