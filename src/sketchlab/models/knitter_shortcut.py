"""SketchKnitter's recognizability-guided shortcut (r-Shortcut, Wang et al., ICLR 2023, section
3.3): a predictor R_phi(x_t, t) of how recognizable a sample is along the sampling trajectory,
trained on a judge's scores, and the mean curve r(t) it gives, stored in the model so that
`SketchKnitter.generate(sampler="rshortcut")` places its few DDIM steps where recognizability
rises (`nn.diffusion.RecognizabilitySpacing`).

This is sketchlab's reconstruction, not the paper's released method. The released code cannot
have produced a trained predictor: its recognizability loop (`gaussian_diffusion_acc.py`, which no
script calls) re-wraps the loss as a new leaf (`Variable(h_loss, requires_grad=True)`) inside
`no_grad`, so its `h_model` (an RNN that is not in the repository either) never gets a gradient,
and the paper's shortcut function is not in the repository. What is reconstructed here, from the
paper's description: R_phi is a bidirectional GRU (2 layers, 256 units) trained with a
per-sample BCE on a judge's scores (the original used one batch-level accuracy), and the
shortcut places its S DDIM steps at equal increments of the mean recognizability curve. Numbers
obtained with it are sketchlab's, not a reproduction of the paper's r-Shortcut rows.

Reads top to bottom: the predictor network, walking sampling trajectories, training R_phi, the
curve, calibration, and a score function from a sketchlab classifier.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError
from sketchlab.models.sketchknitter import SketchKnitter, length_mask
from sketchlab.nn.unet1d import timestep_embedding
from sketchlab.progress import track

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
    if generator is None:
        # One stream for every batch (generate would seed each call alike), drawn from torch's
        # global generator so that torch.manual_seed still makes the walk reproducible.
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, ())))
    smp = model.make_sampler(sampler, steps)
    first = 1 if target_on == "x_t" else 0
    count = len(smp.timesteps)
    picks = range(first, count) if record is None else np.linspace(first, count - 1, record)
    keep = set(np.round(np.asarray(picks)).astype(int).tolist())
    for lo in range(0, n, batch_size):
        b = min(batch_size, n - lo)
        lengths = model.draw_lengths(b, generator)
        mask = length_mask(lengths, model.config.num_points).to(device)
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
    device = torch.device(device) if device is not None else model.data_scale.device
    feats, probs, masks, ts, targets = [], [], [], [], []

    def visit(x, p, mask, lengths, t):
        pen = (p >= model.config.pen_break).float()
        score = np.asarray(score_fn(model.to_sketches(x, pen, lengths)), dtype=np.float32)
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
    for _ in track(range(epochs), desc="recognizer", unit="epochs", enabled=progress):
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


def require_knitter(model) -> None:
    """Refuse a model that has no r-Shortcut to calibrate (anything but SketchKnitter)."""
    if not isinstance(model, SketchKnitter):
        raise ConfigError(f"the r-Shortcut is SketchKnitter's sampler; a {model.name} model has "
                          "none to calibrate")


def calibrate_shortcut(model: SketchKnitter, score_fn: ScoreFn, *, pilot: int = 256, **kwargs):
    """Train R_phi from `score_fn`, estimate r(t) on a pilot batch and store it in the model,
    enabling `generate(sampler="rshortcut", steps=S)`. Returns (predictor, curve, info)."""
    require_knitter(model)
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


__all__ = ["RecognizabilityNet", "ScoreFn", "calibrate_shortcut", "classifier_score_fn",
           "recognizability_curve", "require_knitter", "train_recognizability"]
