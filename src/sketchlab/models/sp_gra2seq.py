"""SP-gra2seq (Zang et al., AAAI 2023): sketch patches -> synonymous-proximity graph -> GCN -> z
-> LSTM (after CMACH508/SP-gra2seq, TensorFlow: `model.py` `Model.build_RPCLVQ` and
`gcn_encoder`, `utils.py` `make_graph_` and `DataLoader`, `train.py`, `sample.py`, `retrieval.py`).

Reads top to bottom: config (`train.py:get_default_hparams`), data (scale factor, patch graphs),
encoder, decoder, losses, generation, and the small CPU demo configuration.

* Input: 21 grey images per sketch (`sketchlab.data.patches`): the whole drawing resized to
  S x S (node 0) and up to 20 S x S crops centred on every 4th pen position, rendered with
  SketchHealer's rasteriser. Training masks each candidate patch with probability 0.1 (its square
  zeroed on the canvas before anything is cropped); validation and encoding do not.
* Data pipeline: `make_batch` (CPU, in the trainer's prefetch thread) plans each sketch's geometry
  and masking with the trainer's explicit generator; the pixels (B x 21 x S x S, 0.7 GB at
  B = 128, S = 256) are rendered on the model's device in `prepare_step` / `encode`, so only the
  integer segment lists cross the bus.
* Encoder: a shared 7-layer stride-2 CNN embeds every node (e, 512-d); the adjacency links each
  patch to itself, its most and second-most cosine-similar patches (weights 1 / 0.5 / 0.2 times
  the signed cosine) and the global node (0.5), row-normalised; then
  X = BN1(ReLU(e)), H0 = A X, H2 = ReLU(ReLU(H0 W1) W2), g = sum over nodes of (H0 + H2),
  y = tanh(BN2(g)), mu = y W_mu, s = y W_s (no bias), z = mu + exp(s / 2) eps.
* Decoder: magenta LSTMCell(1024) fed [S_{t-1}, z] from the state tanh(z W0) (no bias), head
  Linear(1024 -> 123) without bias; the 20-component mixture (`sketchlab.nn.mixture`).
* Loss (`build_RPCLVQ`: `lil_loss + 0.25 * gaussian_loss`): L_R (sum over time / B; pen CE
  unmasked in training, masked in evaluation) plus 0.25 L_C, a hard-assignment k-means loss of
  the valid patch embeddings against K centroids (`latent_mu`, a buffer): assignment by cosine
  to the OLD centroids, new centroids 0.75 old + 0.25 batch mean (staged in `loss`, written in
  `on_step_end` after the optimiser step), L_C = mean over valid patches of 1/2 ||e - mu'_a||^2.
  The centroids start as the first K patch embeddings of the first training batch (`train.py`
  `_train`, epoch 0). No KL term: s is free.
* Validation: L_R with a SAMPLED z (`train.py` `evaluate_model` feeds no z, so the eval graph
  samples its own `batch_z`), masked pen CE, no patch masking; early stopping with patience 5
  rewinding to the best checkpoint (`reload_best`).
* Generation (`sample.py` `main`): z = mu of reference sketches, optionally corrupted by patch
  masking (the sampling option `mask_prob`, the original's `--prob`; it is what
  `heal(strength=P)` and `sketchlab sample --strength P` set), tau = 0.24, T steps.

Choices the original leaves open, and its quirks:
* num_mixture (K): 50, the `train.py` `get_default_hparams` value that training actually uses
  and saves (the README says 30; `--hparams num_mixture=30` gives that).
* Scale factor: `scale_mode="faithful"` (default) is the original's per-split population
  std of ALL values of the split's rows, pen column included (`utils.py`
  `DataLoader.calculate_normalizing_scale_factor`, run on each split's own loader, so valid,
  test and sampling use different scales). The trainer computes one factor, on train
  (`compute_scale_factor`); `setup_from_data` re-normalises the validation and test splits by
  their own std, so validation L_R is computed in the original's units. At sampling and
  encoding time references arrive in the training split's units: the encoder is scale-invariant
  (every sketch is rescaled to the render size) except for the integer truncation of its extent,
  and the decoder's output is converted back with the training factor, so the original's per-
  category test std only changes that truncation. The std is taken after the +-1000 clipping
  (the original: before; identical for QuickDraw, whose offsets stay within +-255).
  `scale_mode="train_dxdy"`: sketch-rnn's train std of dx, dy for every split.
* Node mask: `node_mask="faithful"` (default) keeps the original's (n+1) x (n+1) block, which
  counts one blank padding patch as a node (`train.py` `_train`'s `temp_adj`), and the validity
  taken from column 0 (`gcn_encoder`'s `slide_mask`: masking patch 0 invalidates every patch of
  the sketch); "clean" uses the n x n block and the diagonal.
* Kept as in the original: row 0 drawn as ink and the dot quirk (`make_graph_`), top picks before
  masking with signed cosines (`gcn_encoder`), empty clusters decaying toward 0 (their batch mean
  is 0), no KL.
* Rollback: as the original (`train.py` `train_model` -> `utils.py` `load_checkpoint`, which
  restores only trainable variables, BN statistics and `latent_*`), a rewind restores weights,
  BN statistics, centroids and the step counter (so the lr schedule rewinds) but keeps Adam's
  current moments (`rewind_optimizer=False`); the retried epoch sees a new order and new
  masking draws.
* Healing and Ret (`retrieval.py` encodes the gallery with `mask_prob=0.0`): the query is
  generated from the corrupted sketch, the gallery is the CLEAN reference's mu, so samples
  generated with mask_prob > 0 carry the clean mu as `z`.
* Generation rolls out max_seq_len steps (the longest sketch of all loaded splits); the
  original uses the longest of the category's test split. Outputs are cut at the first end
  token, so this only matters for a rollout that never ends.
* Multi-GPU (DDP): every process stages centroids from its own batch, and DDP's buffer
  broadcast then makes process 0's win each step: the centroids follow one shard of the batch.
* If a batch holds fewer than K patch slots (B * 20 < K), the initial centroids cycle through
  the available embeddings. If no patch of a batch is valid, L_C is 0 (the original: 0 / 0).

The defaults ARE the original's (every quirk above is kept); what differs, and the switch:
* bf16 autocast of the CNN and the decoder on CUDA (`amp=False`: float32 as the original;
  `paper_config` sets it);
* the original's training draws its masking from an unseeded numpy RNG and its test-time masking
  from `random_seed.npy` (shipped only with its pretrained model): here both come from seeded
  generators (the trainer's, `generate(seed=...)`);
* cleaner alternatives, off by default: `scale_mode="train_dxdy"`, `node_mask="clean"`;
* `use_recurrent_dropout=True`: magenta's recurrent dropout in the decoder, which the original
  builds but switches off; small datasets (the zoo's 3,000 SPG sketches) overfit without it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sketchlab.config import TrainingConfig
from sketchlab.data import strokes as S
from sketchlab.data.corrupt import remove_points
from sketchlab.data.patches import (BatchPlan, PatchGeometry, masked_points, node_mask, plan_batch,
                                    plan_sketch, render_nodes)
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError, DataError
from sketchlab.models.base import SketchModel, clip_and_limit
from sketchlab.models.code_decoder import CodeDecoder, DecoderOptions
from sketchlab.nn.cells import make_cell
from sketchlab.nn.graph import PatchCNN, proximity_adjacency
from sketchlab.nn.init import normal_linear
from sketchlab.nn.mixture import MixtureHead, mixture_loss_terms

SCALE_MODES = ("faithful", "train_dxdy")
NODE_MASKS = ("faithful", "clean")


@dataclass
class Config(TrainingConfig):
    max_seq_len: int = -1                # -1: the longest sketch over all loaded splits
    z_size: int = 128                    # latent code size
    dec_rnn_size: int = 1024             # decoder: magenta LSTMCell (dropouts all off in the original)
    # A switch for small data (SPG's 3,000 training sketches overfit without it, see the zoo).
    use_recurrent_dropout: bool = False  # magenta's recurrent dropout in the decoder (original: off)
    recurrent_dropout_prob: float = 0.90  # keep probability
    graph_number: int = 21               # graph nodes: 1 global image + 20 patches
    graph_picture_size: int = 256        # patch and global-image side; smaller for CPU runs
    # Patch CNN widths, one per stride-2 conv: log2(graph_picture_size) - 1 of them.
    cnn_channels: tuple[int, ...] = (8, 32, 64, 128, 256, 512, 512)  # patch CNN widths
    num_mixture: int = 50                # K clustering centroids (code 50, README 30)
    mask_prob: float = 0.1               # training patch-masking probability
    cluster_weight: float = 0.25         # L = L_R + 0.25 L_C
    centroid_decay: float = 0.75         # mu' = 0.75 mu + 0.25 batch mean
    scale_mode: str = "faithful"         # "faithful" | "train_dxdy" (see the module docstring)
    node_mask: str = "faithful"          # "faithful" | "clean" (see the module docstring)
    temperature: float = 0.24            # sampling temperature (sample.py's tau)
    fuse_pointwise: bool = True          # torch.compile the cells' per-step pointwise math on CUDA
    # training (train.py): Adam, lr decay per step, per-variable clip_by_norm 1.0, per-epoch
    # validation, early stopping after 5 bad epochs rolling back to the best checkpoint.
    batch_size: int = 128
    learning_rate: float = 1e-3
    decay_rate: float = 0.9999
    min_learning_rate: float = 1e-5
    lr_decay_every: float = 1.0
    grad_clip: float = 1.0
    clip_mode: str = "norm"
    eval_every: int = 0
    patience: int = 5
    reload_best: bool = True
    rewind_optimizer: bool = False       # the original's rollback keeps Adam's moments
    valid_metric: str = "recon"


@dataclass
class Options(DecoderOptions):
    """SP-gra2seq's sampling options (`sample.py`)."""

    batch_size: int = field(default=100, metadata={"help": "how many sketches are drawn at once"})
    mask_prob: float = field(default=0.0, metadata={
        "help": "SP-gra2seq: mask each reference patch with this probability before encoding "
                "(healing; 0: plain reconstruction; paper: 0.1, 0.3)"})


def all_column_std(points: np.ndarray, xy_scale: float = 1.0) -> float:
    """The original's `np.std(all_rows)`: population std of every value of the `(N, 3)` rows,
    dx, dy AND the pen column pooled; `xy_scale` multiplies dx, dy first."""
    p = np.asarray(points, dtype=np.float64)
    if p.size == 0:
        raise DataError("cannot compute a scale factor from an empty split")
    xy = p[:, :2] * xy_scale
    n = p.shape[0] * 3
    total = xy.sum() + p[:, 2].sum()
    mean = total / n
    var = (np.square(xy).sum() + np.square(p[:, 2]).sum()) / n - mean * mean
    std = float(np.sqrt(max(var, 0.0)))
    if not np.isfinite(std) or std <= 0:
        raise DataError(f"scale factor is {std}: every value of the split is identical")
    return std


def zero_extent(sketches: Sketches) -> np.ndarray:
    """(N,) bool: sketches whose points after row 0 all coincide (the rasteriser's extent
    excludes row 0, so they have nothing to scale: the original divides by zero)."""
    pts, off = sketches.points, sketches.offsets
    lens = np.diff(off)
    out = np.ones(len(lens), bool)
    if len(pts) == 0:
        return out
    keep = np.ones(len(pts), bool)
    keep[off[:-1][lens > 0]] = False                     # drop row 0 of every sketch
    c = np.cumsum(pts[:, :2].astype(np.float64), 0)[keep]
    has = lens >= 2
    if not has.any():
        return out
    starts = (off[:-1] - np.arange(len(lens)))[has]      # row 0 removed before each sketch
    ext = np.maximum(np.maximum.reduceat(c, starts, 0) - np.minimum.reduceat(c, starts, 0), 0).max(1)
    out[has] = ext <= 0
    return out


class SPGra2Seq(CodeDecoder, SketchModel):
    name = "sp-gra2seq"
    Config = Config
    Options = Options
    can_encode = True
    can_heal = True
    heal_option = "mask_prob"

    def __init__(self, config: Config):
        super().__init__(config)
        c = config
        self.require_data_sizes("max_seq_len")
        if c.scale_mode not in SCALE_MODES:
            raise ConfigError(f"scale_mode={c.scale_mode!r}: choose one of {SCALE_MODES}")
        if c.node_mask not in NODE_MASKS:
            raise ConfigError(f"node_mask={c.node_mask!r}: choose one of {NODE_MASKS}")
        if c.num_mixture < 1:
            raise ConfigError(f"num_mixture={c.num_mixture}: need at least one cluster centroid")
        if not 0.0 <= c.mask_prob <= 1.0:
            raise ConfigError(f"mask_prob={c.mask_prob}: a probability in [0, 1]")
        if c.batch_size < 2:
            raise ConfigError(f"batch_size={c.batch_size}: BN2 normalises over the batch in "
                              "training, so it needs at least 2 sketches")
        self.geom = PatchGeometry(c.graph_picture_size, c.graph_number - 1)
        self.cnn = PatchCNN(c.graph_picture_size, c.cnn_channels)
        D = self.cnn.out_features
        self.bn1 = nn.BatchNorm1d(D, eps=1e-5, momentum=0.1)         # over all B x 21 nodes
        # Bias-free linears with weights N(0, c / fan_in), untruncated.
        self.gcn_w1 = normal_linear(D, D, math.sqrt(2.0 / D), bias=False)
        self.gcn_w2 = normal_linear(D, D, math.sqrt(2.0 / D), bias=False)
        self.bn2 = nn.BatchNorm1d(D, eps=1e-5, momentum=0.1)         # over the batch
        self.fc_mu = normal_linear(D, c.z_size, math.sqrt(1.0 / D), bias=False)
        self.fc_sigma = normal_linear(D, c.z_size, math.sqrt(1.0 / D), bias=False)
        keep = c.recurrent_dropout_prob if c.use_recurrent_dropout else 1.0
        self.decoder = make_cell("lstm", 5 + c.z_size, c.dec_rnn_size, recurrent_dropout_keep=keep,
                                 fusion=c.fuse_pointwise)
        self.fc_init = normal_linear(c.z_size, self.decoder.state_size, math.sqrt(5.0 / (3.0 * c.z_size)), bias=False)
        self.head = MixtureHead(c.dec_rnn_size, 20, bias=False, init_std=math.sqrt(1.0 / c.dec_rnn_size))
        # Clustering centroids (`model.py` `de_mu`): never touched by the optimiser. U[0, 5)
        # until the first training batch replaces them.
        self.register_buffer("latent_mu", torch.rand(c.num_mixture, D) * 5.0)
        self.register_buffer("latent_ready", torch.zeros((), dtype=torch.bool))
        self._staged: Tensor | None = None
        self.split_scale: dict[str, float] = {}

    # ---- data preparation ----------------------------------------------------------------------
    @classmethod
    def filter_sketches(cls, config, sketches: Sketches) -> Sketches:
        """Clip to +-1000, drop sketches longer than max_seq_len (if set) and those with nothing to
        render (all points after row 0 coincide)."""
        out = clip_and_limit(sketches, int(getattr(config, "max_seq_len", 0) or 0))
        bad = zero_extent(out)
        return out.select(np.nonzero(~bad)[0]) if bad.any() else out

    @classmethod
    def compute_scale_factor(cls, config, train: Sketches) -> float:
        if config.scale_mode == "faithful":
            return all_column_std(train.points)
        return S.scale_factor(train)

    def setup_from_data(self, data) -> None:
        """Keep the training scale factor; in faithful mode re-normalise every other split by its
        own all-column std (each split's `DataLoader` in the original's `utils.py`
        `preprocess_data`), in place in the trainer's prepared data."""
        super().setup_from_data(data)
        if self.config.scale_mode != "faithful":
            return
        for name, sk in list(data.splits.items()):
            if name == "train" or len(sk) == 0:
                continue
            sigma = all_column_std(sk.points, xy_scale=data.scale_factor)   # raw units
            data.splits[name] = sk.in_units(sigma)
            self.split_scale[name] = sigma

    def make_batch(self, sketches, train, rng):
        """Stroke-5 sequences (no augmentation: the original's is commented out) and the patch
        graphs' plan; training batches mask patches with `mask_prob`, drawn from `rng`."""
        return self.batch_from(sketches, self.config.mask_prob if train else 0.0, rng,
                               degenerate="raise" if train else "blank")

    def batch_from(self, sketches, mask_prob: float, rng, degenerate: str = "blank") -> dict[str, Tensor]:
        if len(sketches) == 0:
            raise DataError("SP-gra2seq: empty batch")
        c = self.config
        plan = plan_batch(sketches, self.geom, mask_prob, rng, degenerate)
        faithful = c.node_mask == "faithful"
        masks = [node_mask(int(n), ids, self.geom.n_patches, faithful)
                 for n, ids in zip(plan.n.tolist(), plan.mask_id)]
        # The decoder's targets: a reference longer than max_seq_len (encoded for sampling or
        # Ret, never a training or validation sketch: those set max_seq_len) is cut, since the
        # encoder reads the patch images only.
        return {
            "strokes": torch.from_numpy(S.pad_batch([s[:c.max_seq_len] for s in sketches],
                                                    c.max_seq_len)),
            "mk": torch.from_numpy(np.stack([m[0] for m in masks])),
            "v": torch.from_numpy(np.stack([m[1] for m in masks])),
            **plan.tensors(),
        }

    def nodes(self, batch) -> Tensor:
        """(B, 21, S, S) node images in [-1, 1], rendered on the batch's device (or precomputed)."""
        if "nodes" in batch:
            return batch["nodes"]
        return render_nodes(BatchPlan.from_tensors(batch), self.geom, device=batch["mk"].device)

    def prepare_step(self, batch):
        batch["nodes"] = self.nodes(batch)
        return batch

    # ---- encoder -------------------------------------------------------------------------------
    def encode_dist(self, batch) -> tuple[Tensor, Tensor, Tensor]:
        """(e (B, 21, D) node embeddings, mu, s) with s the log-variance."""
        x = self.nodes(batch)
        B, N, Sz, _ = x.shape
        e = self.cnn(x.reshape(B * N, 1, Sz, Sz)).reshape(B, N, -1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            e = e.float()
            mk, v = batch["mk"].float(), batch["v"].float()
            adj = proximity_adjacency(e[:, 1:], mk, v)
            X = self.bn1(F.relu(e).reshape(B * N, -1)).reshape(B, N, -1)
            h0 = adj @ X
            h2 = F.relu(self.gcn_w2(F.relu(self.gcn_w1(h0))))
            g = (h0 + h2).sum(1)
            y = torch.tanh(self.bn2(g))
            return e, self.fc_mu(y), self.fc_sigma(y)

    def encode(self, batch) -> Tensor:
        """The code used for retrieval and conditional generation: mu."""
        return self.encode_dist(batch)[1]

    # ---- losses --------------------------------------------------------------------------------
    def cluster_terms(self, e: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(L_C, new centroids mu', occupancy) of 1.9 for patch embeddings e (B, P, D) and
        validity v (B, P). Assignments, mu' and v carry no gradient."""
        c = self.config
        E = e.reshape(-1, e.shape[-1])
        w = v.reshape(-1).to(E.dtype)
        with torch.no_grad():
            Ed = E.detach()
            K = self.latent_mu.shape[0]
            init = Ed[torch.arange(K, device=E.device) % Ed.shape[0]]
            mu = torch.where(self.latent_ready, self.latent_mu, init)
            cos = F.normalize(Ed, dim=1, eps=1e-12) @ F.normalize(mu, dim=1, eps=1e-12).t()
            a = cos.argmax(1)
            onehot = F.one_hot(a, K).to(E.dtype) * w[:, None]
            counts = onehot.sum(0)
            mean = (onehot.t() @ Ed) / (counts + 1e-10)[:, None]
            new_mu = c.centroid_decay * mu + (1.0 - c.centroid_decay) * mean
            occupied = (counts > 0).sum().float()
        diff = E - new_mu[a]
        lc = (w * 0.5 * diff.square().sum(1)).sum() / w.sum().clamp_min(1.0)
        return lc, new_mu, occupied

    def loss(self, batch, step: int = 0):
        c = self.config
        e, mu, s = self.encode_dist(batch)
        # z is sampled in training AND validation (`evaluate_model` feeds no z); no KL term.
        z = mu + torch.exp(s / 2) * torch.randn_like(mu)
        strokes = batch["strokes"]
        seq = mixture_loss_terms(self.decode(strokes[:, :-1], z), strokes[:, 1:],
                                 training=self.training, reduction="sum_time_mean_batch")
        recon = seq["offset"] + seq["pen"]
        terms = {"recon": recon.detach(), "offset": seq["offset"].detach(), "pen": seq["pen"].detach()}
        if self.training:
            with torch.autocast(device_type=e.device.type, enabled=False):
                lc, new_mu, occupied = self.cluster_terms(e[:, 1:], batch["v"])
            self._staged = new_mu
            total = recon + c.cluster_weight * lc
            terms.update({"cluster": lc.detach(), "occupied": occupied})
        else:
            total = recon
        terms["loss"] = total
        terms["sigma"] = torch.exp(s / 2).mean().detach()
        return terms

    def on_step_end(self, step: int) -> None:
        """Write the centroids staged by this step's `loss` (after the optimiser step)."""
        if self._staged is not None:
            self.latent_mu.copy_(self._staged)
            self.latent_ready.fill_(True)
            self._staged = None

    # ---- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_references(self, references: Sketches, mask_prob: float = 0.0, seed: int = 0,
                          batch_size: int = 100) -> Tensor:
        """mu of each reference (eval mode), its patches masked with `mask_prob` first (healing:
        the masking draws come from `default_rng(seed)`, one per candidate patch in order)."""
        self.eval()
        if not 0.0 <= mask_prob <= 1.0:
            raise ConfigError(f"mask_prob={mask_prob}: a probability in [0, 1]")
        if len(references) == 0:
            raise DataError("SP-gra2seq: no reference sketch to encode")
        rng = np.random.default_rng(seed)
        codes = []
        for lo in range(0, len(references), batch_size):
            items = [references[i] for i in range(lo, min(lo + batch_size, len(references)))]
            batch = {k: v.to(self.device) for k, v in self.batch_from(items, mask_prob, rng).items()}
            codes.append(self.encode(batch).float())
        return torch.cat(codes, 0)

    def corrupt(self, references: Sketches, *, strength: float, seed: int = 0) -> Sketches:
        """The references with the points under each masked patch removed: the patches that
        `heal(strength=mask_prob, seed=...)` masks (the same draws), drawn as sketches."""
        self.require("can_heal", "heal sketches")
        rng = np.random.default_rng(seed)
        out = []
        for i, sketch in enumerate(references):
            plan = plan_sketch(sketch, self.geom, float(strength), rng, "blank",
                               where=f"reference {i}")
            hidden = masked_points(sketch, plan, self.geom)
            out.append(remove_points(sketch, ~hidden) if hidden.any() else np.asarray(sketch))
        result = Sketches.from_list(out, scale_factor=references.scale_factor)
        return result.with_categories_of(references)

    @torch.no_grad()
    def generate(self, n: int | None = None, *, references: Sketches | None = None, seed: int = 0,
                 options: Options | None = None, **overrides) -> Sketches:
        """Sketches conditioned on `references` (normalised Sketches; z = mu of their graphs), as
        `sample.py`: each reference's patches are first masked with probability `mask_prob`
        (0: plain reconstruction; 0.1 / 0.3: the paper's healing, `heal(strength=...)`), then
        decoded at temperature tau for max_seq_len steps. Returns normalised sketches carrying
        the references' categories and, as `z`, the Ret gallery code: mu of the CLEAN reference
        (as `retrieval.py`; equal to the decoded code when mask_prob = 0)."""
        self.require_references(references)
        opts = self.make_options(options, **overrides)
        greedy = self.sample_greedily(opts.greedy)
        t = self._temperature(opts.temperature, greedy)
        n = len(references) if n is None else min(int(n), len(references))
        refs = references[np.arange(n)]
        z = self.encode_references(refs, opts.mask_prob, seed, opts.batch_size)
        out = self.decode_batches(n, z, t, greedy, self.generator(seed), opts.batch_size)
        out = self.label_samples(out, refs)
        if opts.mask_prob > 0:
            out.z = self.encode_references(refs, 0.0, seed, opts.batch_size).cpu().numpy()
        return out


# `train.py`'s `get_default_hparams` category list (its README's example trains bee, bus).
PAPER_CATEGORIES = ("bee", "bus", "car", "cat", "flower", "giraffe", "horse", "pig")


def paper_config(**overrides) -> Config:
    """`train.py` as released: the defaults (K = 50, the code's value; its README says 30:
    `num_mixture=30`), float32 everywhere (`amp=False`)."""
    return dataclasses.replace(Config(amp=False), **overrides)


def cpu_config(**overrides) -> Config:
    """A configuration that trains in under an hour on 2 CPU cores (`demo_config`'s sizes on real
    data: sketches up to 150 points, 3,000 steps at 0.63 s of one core each, patches rendered
    included, validation on 20 batches every 250 steps)."""
    return demo_config(**{"max_seq_len": 150, "max_steps": 3000, "eval_every": 250,
                          "max_valid_batches": 20, **overrides})


def demo_config(**overrides) -> Config:
    """A small configuration that learns the built-in doodles on a CPU in a few minutes: 64-px
    patches (render 160 px, 4-px lines, 96-px padding: the paper's constants scaled by 1/4), CNN
    widths 8, 16, 32, 64, 128, an LSTM-256 decoder, z 32, K = 10 centroids, batch 32, lr 2e-3, no
    early stopping. Everything else is the paper's."""
    base = Config(graph_picture_size=64, cnn_channels=(8, 16, 32, 64, 128), dec_rnn_size=256,
                  z_size=32, num_mixture=10, max_seq_len=64, batch_size=32, learning_rate=2e-3,
                  patience=0, reload_best=False)
    return dataclasses.replace(base, **overrides)


__all__ = ["Config", "Options", "PAPER_CATEGORIES", "SPGra2Seq", "all_column_std", "cpu_config",
           "demo_config", "paper_config", "zero_extent"]
