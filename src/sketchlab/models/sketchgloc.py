"""SketchGloc (Zang lab, 2024): strokes -> per-stroke bi-LSTM -> nine grid graphs -> GCN -> z ->
HyperLSTM over ABSOLUTE coordinates (after CMACH508/SketchGloc, TensorFlow: `model.py`
`Model.build_sketchBoard`, `rebranch/utils.py` `DataLoader`, `rebranch/train.py`,
`rebranch/sample_abs.py`).

Reads top to bottom: config (the `rebranch/` code, whose hyper-parameters the README lists;
`root_config` gives the repository root's variant), data (`rebranch/utils.py`
`preprocess_data` and `DataLoader._get_batch_from_indices`, pieces in
`sketchlab.data.strokegrid`), encoder and decoder (`model.py` `build_sketchBoard`), loss
(`get_lil_loss`), generation (`sample_abs.py`) and the small CPU demo configuration.

* Data: T (longest sketch), L (99.9th percentile of stroke lengths) and S (of strokes per
  sketch) come from all loaded splits in `adapt_config`; offsets are divided by the train std of
  dx, dy (+1e-10). A batch holds the decoder's stroke-5 sequence in ABSOLUTE coordinates, the
  first S chunks of the (noisy, "reorganised") absolute strokes for the encoder, and each
  chunk's bounding box, noisy and clean, from which the nine graphs are built on the device.
* "Reorganisation": in training each stroke but the first is moved rigidly by
  re_scale * bound * N(0, I); the decoder must still reconstruct the clean sketch. At sampling
  time the same noise (the sampling option `displacement`; what `heal(strength=...)` and
  `sketchlab sample --strength` set) disrupts the references before encoding (healing).
* Encoder: a bi-LSTM over each chunk's absolute points (final states at the last valid step,
  concatenated, D = 2 enc_rnn_size), a 9-relation GCN, sum readout over the chunks,
  tanh(BatchNorm), mu and a log-variance s. No KL and no prior (the original's loss is
  `lil_loss` alone, so nothing regularises s): z = mu + exp(s/2) eps in training, z = mu in
  validation and when encoding.
* Decoder: HyperLSTM(512) from tanh(Linear(z)) fed [x_abs, y_abs, p1, p2, p3, z]; the
  20-component mixture head models absolute positions. Loss = L_R only (sum over time / B, pen
  cross-entropy unmasked in training, masked in evaluation).
* Optimisation: Adam, per-variable clip_by_norm 1.0 (`clip_mode="norm"`), a CONSTANT learning
  rate (the original's), validation every epoch, early stop after 5 bad epochs.

Choices on the original's quirks and open points (each a config field):

* The LR never decays: `model.py` `build_sketchBoard` decays it by `decay_rate ** global_`, but
  `train.py` never feeds or increments `global_` (it stays 1). `decay_rate = 1.0`, constant 1e-3
  (the original's 9.9999e-4 differs by 1e-5 relative); `--hparams decay_rate=0.99999` gives the
  intended step decay.
* Chunk length L+1: `DataLoader._get_batch_from_indices` gives a closed chunk of L+1 points its
  full length unless the sketch fills all S slots. `clamp_stroke_len=True` clamps it to L
  (recommended); False reproduces the GPU original, whose backward LSTM
  (`bidirectional_dynamic_rnn` in `build_sketchBoard`) then reads the next chunk slot's first
  point and never sees point 0.
* `DataLoader.stroke_pbias` draws its random translation from an interval that is inverted for
  0..255-px data: `stroke_pbias=True` keeps it (training sketches are shifted left/up by
  ~19-185 px, valid/test are not; see `strokegrid.stroke_pbias`); set False for a clean run.
* Ret gallery code: `ret_gallery="z_ori"` as the original (`sample_abs.py` saves `z_ori`, the
  code of the noisy strokes with the clean boxes, as `code_*.npy`); "z" = the code the sketch
  was decoded from, "clean" = the clean reference's code. All three coincide when re_scale = 0.
* Greedy vs stochastic sampling: the root's `sample_abs.py` `sample` defaults to greedy, the
  rebranch's to tau = 0.24; `greedy_sampling=False`, tau 0.24.
* The stroke-start round trip in `_get_batch_from_indices` (to absolute and back) is the
  identity except when the first or last stroke is a single point: `faithful_roundtrip=True`
  keeps those edge cases.
* Ret queries: the original's `retrieval.py` converts each generated sketch back to
  offsets with a loop that runs once too often, so row 0 also subtracts the last offset: every
  query is translated by -(last offset) before it is re-encoded. sketchlab computes Ret on the
  generated sketch as drawn (`ret_query_shift=False`); `ret_query_shift=True` applies the
  original's shift to the queries (`retrieval_queries`, used by `sketchlab evaluate --run` and
  `sketchlab compare`).
* Known parity gap: grid cells use inclusive box boundaries exactly (`DataLoader.get_relgrid`:
  strictly below / above the box is outside). The original re-accumulates each chunk's offsets
  in float64, so two box edges that are equal in float32 can fall on either side there (12 of
  150 sheep validation sketches get a different graph entry); this cannot be matched without
  copying its arithmetic.

What differs from the rebranch code by default, and the switch (`paper_config` sets each to the
original's): the learning rate 1e-3 instead of its 9.999901e-4 (`learning_rate`), chunk lengths
clamped to L (`clamp_stroke_len=False`), Ret on the unshifted queries (`ret_query_shift=True`),
bf16 autocast on CUDA for everything but the mixture head (`amp=False`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from sketchlab.config import TrainingConfig
from sketchlab.data import strokegrid as G
from sketchlab.data import strokes as S
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError, DataError
from sketchlab.models.base import SketchModel
from sketchlab.models.code_decoder import CodeDecoder, DecoderOptions
from sketchlab.models.sketch_rnn import last_valid, reverse_padded
from sketchlab.nn.cells import make_cell
from sketchlab.nn.conv import seed_linear
from sketchlab.nn.mixture import MixtureHead, mixture_loss_terms
from sketchlab.nn.relation_gcn import RelationGCN

RET_GALLERIES = ("z_ori", "z", "clean")


@dataclass
class Config(TrainingConfig):
    # sizes filled in from the data by `adapt_config` when <= 0 (`utils.py` `preprocess_data`)
    max_seq_len: int = -1                # T: the longest sketch of all loaded splits
    max_stroke_len: int = -1             # L: 99.9th pct of stroke lengths (root: 5)
    max_stroke_num: int = -1             # S: 99.9th pct of strokes per sketch
    enc_model: str = "lstm"              # encoder cell: lstm | layer_norm | hyper
    enc_rnn_size: int = 512              # encoder hidden units (root variant: 256)
    dec_model: str = "hyper"             # decoder cell: lstm | layer_norm | hyper
    dec_rnn_size: int = 512              # decoder hidden units
    hyper_num_units: int = 256           # HyperLSTM: units of the small hyper network
    hyper_embedding_size: int = 32       # HyperLSTM: size of the hyper embeddings
    z_size: int = 128                    # latent code size (root variant: 64)
    use_recurrent_dropout: bool = True   # encoder LSTMs and decoder main cell (root: off)
    recurrent_dropout_prob: float = 0.90  # keep probability
    random_scale_factor: float = 0.10    # dx, dy scaled by U(1 +- f) (if augment_stroke_prob > 0)
    augment_stroke_prob: float = 0.10    # training augmentation: probability of dropping a point
    re_scale: float = 0.0                # training reorganisation noise PROB (paper: 0.1 / 0.3)
    stroke_pbias: bool = True            # the original's training position bias (inverted for
                                         # 0..255-px data; see the module docstring)
    pbias_canvas: float = G.PBIAS_CANVAS  # canvas side (px) stroke_pbias assumes (the original's)
    faithful_roundtrip: bool = True      # keep the original's 1-point first/last stroke round trip
    clamp_stroke_len: bool = True        # clamp stroke chunks to max_stroke_len (False: L+1)
    temperature: float = 0.24            # default sampling temperature
    greedy_sampling: bool = False        # sample greedily, as the original's root variant
    fuse_pointwise: bool = True          # torch.compile the cells' per-step pointwise math on CUDA
    ret_gallery: str = "z_ori"           # Ret gallery code: z_ori (the original's) | z | clean
    ret_query_shift: bool = False        # True shifts Ret queries by -(last offset), as the original
    # training (train.py): Adam, per-variable clip_by_norm 1.0, constant LR, patience 5
    batch_size: int = 100                # root: 300
    learning_rate: float = 1e-3
    decay_rate: float = 1.0              # the original's LR is constant (`global_` is never fed)
    min_learning_rate: float = 1e-5
    grad_clip: float = 1.0
    clip_mode: str = "norm"
    eval_every: int = 0                  # validate at the end of every epoch
    patience: int = 5
    reload_best: bool = False
    valid_metric: str = "recon"          # L_R in eval mode, z = mu, clean input, masked pen CE


def root_config(**overrides) -> Config:
    """The repository root's variant (root `train.py` / `utils.py` instead of `rebranch/`):
    6-point chunks (`max_part_len` = 5), no reorganisation noise, smaller encoder and code, no
    dropout or augmentation, batch 300, greedy sampling."""
    base = Config(max_stroke_len=5, enc_rnn_size=256, z_size=64, use_recurrent_dropout=False,
                  random_scale_factor=0.0, augment_stroke_prob=0.0, re_scale=0.0, batch_size=300,
                  greedy_sampling=True)
    return dataclasses.replace(base, **overrides)


@dataclass
class Options(DecoderOptions):
    """SketchGloc's sampling options (the rebranch's `sample.py`)."""

    batch_size: int = field(default=100, metadata={"help": "how many sketches are drawn at once"})
    greedy: bool | None = field(default=None, metadata={
        "help": "pick the most likely mixture component and pen state instead of sampling "
                "(default: SketchGloc's config greedy_sampling, the root variant's choice)"})
    displacement: float = field(default=0.0, metadata={
        "help": "SketchGloc: move each reference stroke by this reorganisation noise scale "
                "(re_scale * stroke bound * N(0, I)) before encoding (healing; paper: 0.1, 0.3)"})
    gallery: Literal["z_ori", "z", "clean"] | None = field(default=None, metadata={
        "help": "SketchGloc: which code the samples carry as z for Ret: z_ori (the original's), z "
                "(the decoded code) or clean (the undisturbed reference's); default: the config's"})


class SketchGloc(CodeDecoder, SketchModel):
    name = "sketchgloc"
    Config = Config
    Options = Options
    can_encode = True
    can_heal = True
    heal_option = "displacement"
    fp32_head = True        # the mixture models absolute positions: keep its means in float32

    def __init__(self, config: Config):
        super().__init__(config)
        c = config
        self.require_data_sizes("max_seq_len", "max_stroke_len", "max_stroke_num")
        if c.ret_gallery not in RET_GALLERIES:
            raise ConfigError(f"ret_gallery={c.ret_gallery!r}: choose one of {RET_GALLERIES}")
        keep = c.recurrent_dropout_prob if c.use_recurrent_dropout else 1.0
        H, D = c.enc_rnn_size, 2 * c.enc_rnn_size
        self.enc_fw = make_cell(c.enc_model, 2, H, recurrent_dropout_keep=keep, fusion=c.fuse_pointwise)
        self.enc_bw = make_cell(c.enc_model, 2, H, recurrent_dropout_keep=keep, fusion=c.fuse_pointwise)
        self.gcn = RelationGCN(D, G.N_RELATIONS)
        self.bn = nn.BatchNorm1d(D, eps=1e-5, momentum=0.1)    # TF decay 0.9
        self.fc_mu = seed_linear(D, c.z_size)                   # N(0, 2/D), bias 0
        self.fc_sigma = seed_linear(D, c.z_size)
        self.decoder = make_cell(c.dec_model, 5 + c.z_size, c.dec_rnn_size, recurrent_dropout_keep=keep,
                                 hyper_num_units=c.hyper_num_units,
                                 hyper_embedding_size=c.hyper_embedding_size, fusion=c.fuse_pointwise)
        self.fc_init = seed_linear(c.z_size, self.decoder.state_size)  # covers the hyper state too
        self.head = MixtureHead(c.dec_rnn_size, 20, bias=True, init_std=math.sqrt(2.0 / c.dec_rnn_size))

    # ---- data preparation ----------------------------------------------------------------------
    @classmethod
    def compute_scale_factor(cls, config, train: Sketches) -> float:
        """std of the train split's dx, dy (pen excluded), + 1e-10 as `normalize_seq` divides."""
        return S.scale_factor(train) + 1e-10

    @classmethod
    def adapt_config(cls, config, splits):
        """T, L and S from every loaded split (train, valid and test together, as the original's
        `utils.py` `preprocess_data` -> `get_max_len`)."""
        if min(config.max_seq_len, config.max_stroke_len, config.max_stroke_num) > 0:
            return config
        T, L, Sn = G.stroke_stats(splits.values())
        return dataclasses.replace(
            config, max_seq_len=config.max_seq_len if config.max_seq_len > 0 else T,
            max_stroke_len=config.max_stroke_len if config.max_stroke_len > 0 else L,
            max_stroke_num=config.max_stroke_num if config.max_stroke_num > 0 else Sn)

    def make_batch(self, sketches, train, rng, re_scale: float | None = None):
        """One batch (`utils.py` `DataLoader._get_batch_from_indices`). `re_scale` is the
        reorganisation noise PROB: the config's in training, 0 in evaluation, or the caller's
        (sampling). Keys:

        strokes (B, T+1, 5)    decoder sequence, ABSOLUTE x, y (row 0 = S0)
        chunks (B, S, L, 2)    each kept chunk's first L noisy absolute points, zero-padded
        chunk_len (B, S)       their lengths (0 = empty slot)
        boxes, boxes_clean (B, S, 4)  each chunk's box (x0, x1, y0, y1), noisy / clean
        """
        c = self.config
        B = len(sketches)
        if B == 0:
            raise DataError("SketchGloc.make_batch: empty batch")
        T, L, Sn = c.max_seq_len, c.max_stroke_len, c.max_stroke_num
        prob = (c.re_scale if train else 0.0) if re_scale is None else float(re_scale)
        if prob < 0:
            raise ConfigError(f"re_scale={prob}: the reorganisation noise scale must be >= 0")
        augment = train and c.augment_stroke_prob > 0
        targets, noisies = [], []
        for b, sketch in enumerate(sketches):
            d = np.asarray(sketch, dtype=np.float32)
            if d.ndim != 2 or d.shape[1] != 3:
                raise DataError(f"SketchGloc.make_batch: sketch {b} is not an (n, 3) stroke-3 array "
                                f"(shape {d.shape})")
            # An empty sketch (e.g. a generated one that ended at once) has no chunk: its code
            # comes from the empty graph (readout 0), as in the original.
            if augment:
                d = S.random_scale(d, c.random_scale_factor, rng)
            bound = G.origin_bound(d)                       # before point dropping and the shift
            if augment:
                d = S.augment_strokes(d, c.augment_stroke_prob, rng)
                if c.stroke_pbias:
                    bx, by = G.stroke_pbias(d, self.scale_factor, rng, c.pbias_canvas)
                    d = d.copy()
                    d[0, 0] += bx
                    d[0, 1] += by
            clean, noisy = self.reorganised(d, bound, prob, rng)
            targets.append(clean)
            noisies.append(noisy)
        # Chunks of every sketch at once; chunk_len may be L+1 unless clamped (the original
        # clamps only when a sketch fills all S slots).
        chunks, chunk_len, boxes, boxes_clean = G.chunk_batch(targets, noisies, L, Sn, c.clamp_stroke_len)
        batch = {
            "strokes": torch.from_numpy(S.pad_batch(targets, T)),   # refuses a sketch longer than T
            "chunks": torch.from_numpy(chunks),
            "chunk_len": torch.from_numpy(chunk_len),
            "boxes": torch.from_numpy(boxes),
            "boxes_clean": torch.from_numpy(boxes_clean),
        }
        if not c.clamp_stroke_len:
            # The original packs the batch's chunks back to back; a chunk of L+1 points makes
            # its backward LSTM read the NEXT packed chunk's first point (zeros after the last).
            valid = chunk_len.reshape(-1) > 0
            packed = chunks.reshape(-1, L, 2)[valid, 0]
            nxt = np.zeros((B * Sn, 2), np.float32)
            nxt[np.nonzero(valid)[0][:-1]] = packed[1:]
            batch["chunk_next"] = torch.from_numpy(nxt.reshape(B, Sn, 2))
        return batch

    def reorganised(self, d: np.ndarray, bound: float, prob: float, rng) -> tuple[np.ndarray, np.ndarray]:
        """(clean, noisy) absolute rows of stroke-3 `d`: the decoder's target, and the same
        sketch with every stroke but the first moved by prob * bound * N(0, I) (the encoder's
        input)."""
        if self.config.faithful_roundtrip:
            d = G.faithful_roundtrip(d)
        clean = S.to_absolute(d)
        return clean, G.reorganise(clean, clean[:, 2], prob * bound, rng)

    def corrupt(self, references: Sketches, *, strength: float, seed: int = 0) -> Sketches:
        """The references with their strokes moved as `heal(strength=displacement, seed=...)`
        moves them before encoding (the same draws), as sketches."""
        self.require("can_heal", "heal sketches")
        rng = np.random.default_rng(int(seed))
        out = []
        for sketch in references:
            d = np.asarray(sketch, dtype=np.float32)
            if len(d) == 0:
                out.append(d)
                continue
            _, noisy = self.reorganised(d, G.origin_bound(d), float(strength), rng)
            out.append(S.to_offsets(noisy))
        return Sketches.from_list(out, scale_factor=references.scale_factor).with_categories_of(references)

    # ---- encoder -------------------------------------------------------------------------------
    def stroke_embeddings(self, batch) -> Tensor:
        """V (B, S, D): [h_fw ; h_bw] of each chunk at its last valid step, 0 for empty slots.

        Eagerly, only the occupied slots run, and only up to the batch's longest chunk (most of
        the S x L grid is padding: sheep have S = 62, L = 131); while a CUDA graph is being
        captured every slot runs the full L steps (static shapes). Both give the same V."""
        x = batch["chunks"].float()
        B, Sn, L, _ = x.shape
        x = x.reshape(B * Sn, L, 2)
        n = batch["chunk_len"].reshape(-1).to(x.device)
        nxt = batch["chunk_next"].to(x.dtype).reshape(B * Sn, 1, 2) if "chunk_next" in batch else None
        rows = None
        if not self.static_chunks(x):
            rows = (n > 0).nonzero().squeeze(1)
            if len(rows) == 0:
                return x.new_zeros(B, Sn, 2 * self.config.enc_rnn_size)
            L = int(n.max().clamp(max=L))
            x, n = x[rows, :L], n[rows]
            nxt = None if nxt is None else nxt[rows]
        n_fw = n.clamp(max=L)
        zeros = lambda cell: x.new_zeros(x.shape[0], cell.state_size)  # noqa: E731
        h_fw, _ = self.enc_fw.sequence(x, zeros(self.enc_fw))
        if self.config.clamp_stroke_len:
            x_bw = reverse_padded(x, n_fw)
        else:
            # GPU TF's reverse_sequence with length L+1 reads one step past the chunk: the next
            # packed chunk's first point (`chunk_next`); point 0 is never seen.
            x_bw = reverse_padded(torch.cat([x, nxt], 1), n)[:, :L]
        h_bw, _ = self.enc_bw.sequence(x_bw, zeros(self.enc_bw))
        v = torch.cat([last_valid(h_fw, n_fw), last_valid(h_bw, n_fw)], -1)
        if rows is None:
            v = v * (n > 0).unsqueeze(-1).to(v.dtype)
        else:
            v = v.new_zeros(B * Sn, v.shape[-1]).index_copy(0, rows, v)
        return v.reshape(B, Sn, -1)

    @staticmethod
    def static_chunks(x: Tensor) -> bool:
        """Run every chunk slot for all L steps (no data-dependent shapes): under CUDA-graph capture."""
        return x.is_cuda and torch.cuda.is_current_stream_capturing()

    def encode_dist(self, batch, clean_boxes: bool = False) -> tuple[Tensor, Tensor]:
        """(mu, s) with s the log-variance; `clean_boxes` builds the graphs from the clean
        chunk boxes (the original's z_ori)."""
        if self.training and batch["chunks"].shape[0] < 2:
            raise ConfigError("SketchGloc trains with batch norm: a training batch needs >= 2 sketches")
        v = self.stroke_embeddings(batch)
        boxes = batch["boxes_clean" if clean_boxes else "boxes"].float()
        valid = batch["chunk_len"].to(boxes.device) > 0
        u = self.gcn(v, G.grid_graphs(boxes, valid))
        y = torch.tanh(self.bn(u.sum(1).float()))
        return self.fc_mu(y), self.fc_sigma(y)

    def encode(self, batch) -> Tensor:
        """The code for retrieval, maps and conditional generation: mu."""
        return self.encode_dist(batch)[0]

    # ---- loss ----------------------------------------------------------------------------------
    def graph_key(self, step: int):
        return "train"          # no step-dependent control flow, static shapes

    def loss(self, batch, step: int = 0):
        mu, s = self.encode_dist(batch)
        z = mu + torch.exp(s / 2) * torch.randn_like(mu) if self.training else mu
        strokes = batch["strokes"]
        raw = self.decode(strokes[:, :-1], z)
        t = mixture_loss_terms(raw, strokes[:, 1:], training=self.training,
                               reduction="sum_time_mean_batch")
        recon = t["offset"] + t["pen"]
        return {"loss": recon, "recon": recon.detach(), "offset": t["offset"].detach(),
                "pen": t["pen"].detach()}

    # ---- generation ----------------------------------------------------------------------------
    def rollout_to_stroke3(self, seq5: np.ndarray) -> np.ndarray:
        """The decoder draws ABSOLUTE rows: cut at the first end row, then back to stroke-3
        offsets (row 0 stays the start position)."""
        return S.to_offsets(S.stroke5_to_stroke3(seq5))

    def retrieval_queries(self, sketches: Sketches) -> Sketches:
        """With `ret_query_shift`, each sketch as the original's `retrieval.py` reads it back:
        translated by -(its last offset) (row 0, the absolute start, minus the last row's dx, dy;
        a one-point sketch's start becomes the origin). Otherwise unchanged."""
        if not self.config.ret_query_shift or len(sketches) == 0:
            return sketches
        pts = sketches.points.copy()
        starts, lengths = sketches.offsets[:-1], sketches.lengths
        full = lengths > 0
        pts[starts[full], :2] -= pts[(starts + lengths - 1)[full], :2]
        return Sketches(pts, sketches.offsets, category=sketches.category,
                        category_names=sketches.category_names, z=sketches.z,
                        component=sketches.component, scale_factor=sketches.scale_factor)

    def greedy_by_default(self) -> bool:
        return bool(self.config.greedy_sampling)      # the root's `sample_abs.py` samples greedily

    @torch.no_grad()
    def generate(self, n: int | None = None, *, references: Sketches | None = None, seed: int = 0,
                 options: Options | None = None, **overrides) -> Sketches:
        """Reconstruct (heal) `references` (normalised sketches): each is disrupted by the
        reorganisation noise `displacement` (`heal(strength=...)`), encoded (z = mu), and
        decoded at temperature tau (or greedily). SketchGloc has no prior, so it cannot sample
        without references. The result carries the references' categories and, as `z`, the Ret
        gallery code chosen by `gallery` (config `ret_gallery`, see the module docstring)."""
        self.eval()
        self.require_references(references)
        opts = self.make_options(options, **overrides)
        greedy = self.sample_greedily(opts.greedy)
        t = self._temperature(opts.temperature, greedy)
        gallery = self.config.ret_gallery if opts.gallery is None else opts.gallery
        displacement = float(opts.displacement)
        n = len(references) if n is None else min(int(n), len(references))
        if n < 1:
            raise DataError("no reference sketch to condition on")
        device = self.device
        rng = np.random.default_rng(int(seed))            # the disruption noise, reproducible
        gallery_codes = []

        def codes(lo: int, hi: int) -> Tensor:
            items = [references[i] for i in range(lo, hi)]
            batch = {k: v.to(device) for k, v in
                     self.make_batch(items, False, rng, re_scale=displacement).items()}
            z = self.encode_dist(batch)[0]
            if gallery == "z_ori":
                code = self.encode_dist(batch, clean_boxes=True)[0]
            elif gallery == "clean" and displacement > 0:
                clean = {k: v.to(device) for k, v in self.make_batch(items, False, rng, re_scale=0.0).items()}
                code = self.encode_dist(clean)[0]
            else:
                code = z
            gallery_codes.append(code.float().cpu().numpy())
            return z

        result = self.decode_batches(n, codes, t, greedy, self.generator(seed), opts.batch_size)
        result.z = np.concatenate(gallery_codes, 0)
        return self.label_samples(result, references)


# The rebranch's default category list (`sample_abs.get_ds`: ds3).
PAPER_CATEGORIES = ("pig", "bee", "flower", "bus", "giraffe", "car", "cat", "horse")


def paper_config(**overrides) -> Config:
    """The rebranch code as released (the README's configuration): its sizes and data settings,
    the constant learning rate its never-fed step counter gives ((1e-3 - 1e-5) * 0.99999 + 1e-5),
    unclamped chunk lengths (the GPU original's out-of-range read), Ret queries shifted by the
    last offset, float32 everywhere (`amp=False`). The reorganisation noise stays the code's
    default 0; the paper's disrupted runs use `re_scale=0.1` / `0.3`."""
    base = Config(learning_rate=(1e-3 - 1e-5) * 0.99999 + 1e-5, clamp_stroke_len=False,
                  ret_query_shift=True, amp=False)
    return dataclasses.replace(base, **overrides)


def cpu_config(**overrides) -> Config:
    """A configuration that trains in under an hour on 2 CPU cores (`demo_config`'s sizes on real
    data: 8,000 steps at 0.15 s of one core each, validation on 20 batches every 500 steps)."""
    return demo_config(**{"max_steps": 8000, "eval_every": 500, "max_valid_batches": 20,
                          **overrides})


def demo_config(**overrides) -> Config:
    """A small configuration that learns the built-in doodles on a CPU in about two minutes:
    encoder LSTM 64 (D = 128), an LSTM-128 decoder without recurrent dropout (torch's native
    kernel on a CPU), z 32, batch 32, reorganisation noise 0.1 in training, no early stopping.
    Everything else is the rebranch configuration's."""
    base = Config(enc_rnn_size=64, dec_model="lstm", dec_rnn_size=128, z_size=32, batch_size=32,
                  use_recurrent_dropout=False, re_scale=0.1, patience=0, learning_rate=2e-3)
    return dataclasses.replace(base, **overrides)


__all__ = ["Config", "Options", "PAPER_CATEGORIES", "SketchGloc", "cpu_config", "demo_config",
           "paper_config", "root_config"]
