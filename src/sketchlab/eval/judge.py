"""The judge of the evaluation: a trained classifier that scores sketches (logits -> Rec, IS) and
gives their features (FID, precision/recall, Geometry Score), behind one small interface.

* `FeatureExtractor` (`sketchlab.eval.features`): what the feature-based metrics need from a
  network (render sketches the way it expects, features and logits, all of it in batches).
* `SketchANetFeatures`: a trained Sketch-a-Net run (`sketchlab.models.sketch_a_net`, loaded by
  `sketchlab.runs.load_judge`) as judge and feature extractor (its L7 features).
* `make_extractor`: the judge itself, or the FID Inception-v3 from local weights
  (`sketchlab.eval.inception`).

Numbers computed with Sketch-a-Net features are "FID_sketch(Sketch-a-Net)" and friends: they are
not comparable with figures computed with the ImageNet Inception-v3.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError, DataError
from sketchlab.eval.features import FeatureExtractor
from sketchlab.eval.inception import InceptionFeatures
from sketchlab.models.base import SketchModel


class SketchANetFeatures(FeatureExtractor):
    """A trained classifier model as judge (logits -> Rec, IS) and feature extractor.

    `model` is a Sketch-a-Net (`sketchlab.models.sketch_a_net.SketchANet`, built by
    `sketchlab.runs.load_judge`) or any model with the same judging methods: `categories`,
    `render(sketches)` (the evaluation input, on the model's device), `embed(images)` (features)
    and `head(features)` (logits). It runs in evaluation mode on `device` (default: the model's).
    """

    def __init__(self, model: SketchModel, device=None, batch_size: int = 256,
                 run_dir: str | os.PathLike | None = None):
        self.device = torch.device(device) if device is not None else model.device
        self.model = model.to(self.device).eval()
        self.name = model.name
        self.batch_size = batch_size
        self.run_dir = Path(run_dir) if run_dir is not None else None

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(self.model.categories)

    @property
    def config(self):
        """The model's config: the input pipeline every judged sketch goes through."""
        return self.model.config

    def images(self, sketches):
        return self.model.render(list(sketches))

    def features_and_logits(self, images):
        f = self.model.embed(images)
        return f, self.model.head(f)

    def labels(self, sketches: Sketches, where: str = "sketches") -> np.ndarray:
        """Each sketch's category as an index into this judge's categories."""
        return category_labels(sketches, self.categories, where)

    @torch.inference_mode()
    def accuracy(self, sketches: Sketches, progress: bool = False) -> float:
        """Top-1 accuracy on categorised sketches."""
        _, logits = self.extract(sketches, progress=progress, desc="accuracy")
        return float(np.mean(logits.argmax(1) == self.labels(sketches)))


def category_labels(sketches: Sketches, categories: Sequence[str], where: str) -> np.ndarray:
    """Map `sketches.category` (indices into its own `category_names`) onto `categories`."""
    categories = list(categories)
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
    if spec in (None, "", "classifier", classifier.name):
        return classifier
    if spec.startswith("inception:"):
        return InceptionFeatures(spec.split(":", 1)[1], device=device or classifier.device,
                                 batch_size=batch_size)
    raise ConfigError(f"unknown feature extractor {spec!r}: use 'classifier' or "
                      f"'inception:/path/to/pt_inception-2015-12-05-6726825d.pth'")
