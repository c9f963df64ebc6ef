"""The interface between the evaluation metrics and a network that looks at sketches."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from sketchlab.data.sketches import Sketches
from sketchlab.errors import DataError
from sketchlab.progress import track


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
        for s in track(range(0, len(items), self.batch_size), desc=desc, unit="batches",
                       enabled=progress, leave=False):
            f, lg = self.features_and_logits(self.images(items[s:s + self.batch_size]))
            feats.append(f.float().cpu())
            if lg is not None:
                logits.append(lg.float().cpu())
        if not feats:
            raise DataError("no sketches to extract features from")
        return (torch.cat(feats).numpy(), torch.cat(logits).numpy() if logits else None)
