"""Latent codes of sketches, and how well discrete latent labels agree with known classes.

Works with any sketchlab model that has `make_batch` and `encode` (sketch-rnn, RPCL-pix2seq(H),
...): `label_agreement` scores a
labelling (e.g. the RPCL component of each code) against ground truth (category, or the doodle
style) with a contingency table, purity and normalised mutual information.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sketchlab.data.sketches import Sketches
from sketchlab.errors import DataError


def contingency(truth, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts table[i, j] = #{truth == rows[i] and labels == cols[j]}; returns (table, rows, cols)."""
    truth, labels = np.asarray(truth).reshape(-1), np.asarray(labels).reshape(-1)
    if truth.shape != labels.shape:
        raise ValueError(f"{truth.shape[0]} true classes for {labels.shape[0]} labels")
    rows, ti = np.unique(truth, return_inverse=True)
    cols, li = np.unique(labels, return_inverse=True)
    table = np.zeros((len(rows), len(cols)), np.int64)
    np.add.at(table, (ti, li), 1)
    return table, rows, cols


def label_agreement(truth, labels) -> dict:
    """Purity (each label votes for its majority class), NMI (arithmetic normalisation, as
    scikit-learn's default) and the contingency table of `labels` against `truth`."""
    table, rows, cols = contingency(truth, labels)
    n = table.sum()
    if n == 0:
        raise ValueError("label_agreement: no items")
    purity = table.max(0).sum() / n
    p = table / n
    pr, pc = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pr, pc)[nz])).sum())
    h = lambda q: float(-(q[q > 0] * np.log(q[q > 0])).sum())  # noqa: E731
    denom = (h(pr) + h(pc)) / 2
    nmi = 1.0 if denom <= 0 else max(0.0, mi / denom)
    return {"purity": float(purity), "nmi": float(nmi) if math.isfinite(nmi) else 0.0,
            "table": table.tolist(), "rows": rows.tolist(), "cols": cols.tolist(),
            "n_labels_used": int(len(cols))}


def latent_label_agreement(model, sketches: Sketches, truth, batch_size: int = 500) -> dict:
    """`label_agreement` of each of `model.latent_labels` (e.g. the RPCL component) of the
    sketches' codes against `truth` (one class per sketch, e.g. the doodle style)."""
    labels = model.latent_labels(model.encode_sketches(sketches, batch_size))
    return {name: label_agreement(truth, value) for name, value in labels.items()}


__all__ = ["contingency", "label_agreement", "latent_label_agreement"]
