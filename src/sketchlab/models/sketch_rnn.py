"""sketch-rnn (Ha & Eck 2017): a sequence-to-sequence VAE over stroke-5 sketches.

Reads top to bottom: config (magenta's `get_default_hparams`), sampling options, encoder,
decoder, loss, generate and complete, and the presets (`paper_config`, `cpu_config`).

* Data: max_seq_len = T is the longest sketch of the loaded data, as magenta's
  `sketch_rnn_train.py` sets it (`model.py`'s 250 default is "not used"): every sketch is kept,
  padded to T, and sampling rolls out T steps. `max_seq_len_cap` bounds T on data with a few very
  long sketches; the sketches above it are left out with a warning that counts them. An explicit
  `max_seq_len` fixes T (longer sketches likewise left out, with the warning).
* Encoder: a bidirectional LSTM over the real points (S0 excluded); the last valid output of each
  direction, concatenated, gives mu and a log-variance `presig` (weights N(0, 0.001)).
* Decoder: LSTM / LayerNorm-LSTM / HyperLSTM from `sketchlab.nn.cells`; its initial state is
  tanh(Linear(z)) and z is concatenated to every input step (conditional model), or zero state
  and no z (unconditional model). The shared `CodeDecoder` runs it (teacher-forced, sampling,
  completion).
* Output: the 20-component bivariate Gaussian mixture + 3-way pen softmax (`sketchlab.nn.mixture`).
* Loss: magenta's r_cost, the mean over batch x T of the offset NLL (masked past the end) plus
  the pen cross-entropy (over the padding too, which teaches the model to stop); with T from the
  data this is magenta's number exactly. Plus kl_weight(step) * max(KL, kl_tolerance), KL =
  -0.5 mean(1 + presig - mu^2 - exp(presig)) over batch x z, and
  kl_weight(step) = kl_weight - (kl_weight - kl_weight_start) * kl_decay_rate ** step.
* Validation is magenta's: its eval model is built with is_training=1 (pen loss unmasked) and a
  kl_weight variable that is never assigned, so it scores r_cost + kl_weight_start * KL with
  dropout off. The best checkpoint is the one with the lowest such cost.

What differs from magenta, and the switch: bf16 autocast on CUDA for speed (`amp=False`, as
`paper_config` sets, gives magenta's float32); everything else is magenta's by default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from sketchlab.config import TrainingConfig
from sketchlab.data import strokes as S
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError
from sketchlab.models.base import SketchModel, clip_and_limit
from sketchlab.models.code_decoder import CodeDecoder, DecoderOptions
from sketchlab.nn.cells import make_cell
from sketchlab.nn.init import normal_linear
from sketchlab.nn.mixture import MixtureHead, mixture_loss_terms


@dataclass
class Config(TrainingConfig):
    max_seq_len: int = -1                # -1: the longest sketch of the loaded data (magenta)
    max_seq_len_cap: int = 0             # > 0: leave out longer sketches (warned), T <= the cap
    enc_model: str = "lstm"              # encoder cell: lstm | layer_norm | hyper (bidirectional)
    enc_rnn_size: int = 256              # encoder hidden units per direction
    dec_model: str = "lstm"              # "lstm" | "layer_norm" | "hyper"
    dec_rnn_size: int = 512              # decoder hidden units
    z_size: int = 128                    # latent code size
    num_mixture: int = 20                # Gaussian components of the output mixture per point
    conditional: bool = True             # False: a decoder-only language model of sketches
    kl_weight: float = 0.5               # final weight of the KL term
    kl_weight_start: float = 0.01        # KL weight at step 0 (annealed toward kl_weight)
    kl_tolerance: float = 0.2            # free bits: KL below this per dimension is not penalised
    kl_decay_rate: float = 0.99995       # KL annealing: w = kl_weight - (kl_weight - start) rate^s
    use_recurrent_dropout: bool = True   # recurrent dropout in the decoder (see below)
    recurrent_dropout_prob: float = 0.90  # keep probability
    use_input_dropout: bool = False      # dropout on the decoder's inputs
    input_dropout_prob: float = 0.90     # keep probability
    use_output_dropout: bool = False     # dropout on the decoder's outputs
    output_dropout_prob: float = 0.90    # keep probability
    random_scale_factor: float = 0.15    # training augmentation: dx, dy scaled by U(1 - f, 1 + f)
    augment_stroke_prob: float = 0.10    # training augmentation: probability of dropping a point
    temperature: float = 0.25            # default sampling temperature
    fuse_pointwise: bool = True          # torch.compile the cells' per-step pointwise math on CUDA
    # training (magenta: Adam, clip by value 1.0, lr decay per step, keep the best valid cost)
    batch_size: int = 100
    learning_rate: float = 1e-3
    decay_rate: float = 0.9999
    min_learning_rate: float = 1e-5
    grad_clip: float = 1.0
    clip_mode: str = "value"
    eval_every: int = 500
    patience: int = 0
    valid_metric: str = "loss"


@dataclass
class Options(DecoderOptions):
    """sketch-rnn's sampling options (magenta `sample.py`)."""

    sample_z: bool = field(default=False, metadata={
        "help": "condition on a draw from q(z|x) instead of its mean (sketch-rnn)"})


def last_valid(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`h[b, lengths[b] - 1]` for a `(B, T, H)` tensor."""
    idx = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, h.shape[-1])
    return h.gather(1, idx).squeeze(1)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """TF's `reverse_sequence`: reverse the first `lengths[b]` steps of each row, keep the padding."""
    T = x.shape[1]
    t = torch.arange(T, device=x.device).unsqueeze(0)
    L = lengths.unsqueeze(1)
    idx = torch.where(t < L, L - 1 - t, t)
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class SketchRNN(CodeDecoder, SketchModel):
    name = "sketch-rnn"
    Config = Config
    Options = Options
    can_sample = True
    can_encode = True      # the conditional model; an unconditional one has no encoder
    can_complete = True

    def __init__(self, config: Config):
        super().__init__(config)
        c = config
        self.require_data_sizes("max_seq_len")
        self.can_encode = bool(c.conditional)
        keep = c.recurrent_dropout_prob if c.use_recurrent_dropout else 1.0
        if c.conditional:
            self.enc_fw = make_cell(c.enc_model, 5, c.enc_rnn_size, recurrent_dropout_keep=keep, fusion=c.fuse_pointwise)
            self.enc_bw = make_cell(c.enc_model, 5, c.enc_rnn_size, recurrent_dropout_keep=keep, fusion=c.fuse_pointwise)
            self.fc_mu = normal_linear(2 * c.enc_rnn_size, c.z_size, 0.001)
            self.fc_presig = normal_linear(2 * c.enc_rnn_size, c.z_size, 0.001)
        dec_in = 5 + (c.z_size if c.conditional else 0)
        self.decoder = make_cell(c.dec_model, dec_in, c.dec_rnn_size, recurrent_dropout_keep=keep, fusion=c.fuse_pointwise)
        if c.conditional:
            self.fc_init = normal_linear(c.z_size, self.decoder.state_size, 0.001)
        self.input_dropout = nn.Dropout(1 - c.input_dropout_prob) if c.use_input_dropout else nn.Identity()
        self.output_dropout = nn.Dropout(1 - c.output_dropout_prob) if c.use_output_dropout else nn.Identity()
        self.head = MixtureHead(c.dec_rnn_size, c.num_mixture)

    # ---- data ----------------------------------------------------------------------------------
    @classmethod
    def filter_sketches(cls, config, sketches: Sketches) -> Sketches:
        """Clip raw offsets to +-1000 and leave out the sketches longer than an explicit
        max_seq_len, or than max_seq_len_cap when T comes from the data (a warning counts them);
        with neither, every sketch is kept (magenta)."""
        if config.max_seq_len > 0:
            return clip_and_limit(sketches, config.max_seq_len, "max_seq_len")
        return clip_and_limit(sketches, config.max_seq_len_cap, "max_seq_len_cap")

    def make_batch(self, sketches, train, rng):
        c = self.config
        if train:
            sketches = [S.random_scale(s, c.random_scale_factor, rng) for s in sketches]
            if c.augment_stroke_prob > 0:
                sketches = [S.augment_strokes(s, c.augment_stroke_prob, rng) for s in sketches]
        return {
            "strokes": torch.from_numpy(S.pad_batch(sketches, c.max_seq_len)),
            "lengths": torch.tensor([len(s) for s in sketches], dtype=torch.long),
        }

    # ---- encoder -------------------------------------------------------------------------------
    def encode_dist(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, presig) of q(z | sketch); presig is the log-variance."""
        if not self.config.conditional:
            raise ConfigError("an unconditional sketch-rnn has no encoder")
        x = batch["strokes"][:, 1:]                       # the real points, S0 excluded
        lengths = batch["lengths"].to(x.device)
        zeros = lambda cell: x.new_zeros(x.shape[0], cell.state_size)  # noqa: E731
        h_fw, _ = self.enc_fw.sequence(x, zeros(self.enc_fw))
        h_bw, _ = self.enc_bw.sequence(reverse_padded(x, lengths), zeros(self.enc_bw))
        feat = torch.cat([last_valid(h_fw, lengths), last_valid(h_bw, lengths)], -1)
        return self.fc_mu(feat), self.fc_presig(feat)

    def encode(self, batch) -> torch.Tensor:
        """The latent code used for retrieval and maps: mu."""
        return self.encode_dist(batch)[0]

    # ---- decoder (CodeDecoder's, with magenta's optional input and output dropout) -------------
    def dropout_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_dropout(x)

    def dropout_outputs(self, h: torch.Tensor) -> torch.Tensor:
        return self.output_dropout(h)

    # ---- loss ----------------------------------------------------------------------------------
    def kl_weight_at(self, step):
        """kl_weight(step); `step` may be a device tensor (CUDA-graph replay) or an int."""
        c = self.config
        if not self.training:
            return c.kl_weight_start
        w = c.kl_weight - (c.kl_weight - c.kl_weight_start) * c.kl_decay_rate ** step
        return w.float() if isinstance(w, torch.Tensor) else w

    def graph_key(self, step: int):
        # No step-dependent control flow: one graph serves every training step.
        return "train"

    def loss(self, batch, step: int = 0):
        c = self.config
        strokes = batch["strokes"]
        z = None
        terms = {}
        if c.conditional:
            mu, presig = self.encode_dist(batch)
            z = mu + torch.exp(presig / 2) * torch.randn_like(mu)
            kl = -0.5 * torch.mean(1 + presig - mu.square() - presig.exp())
            kl_cost = torch.clamp(kl, min=c.kl_tolerance)
            terms["kl"] = kl.detach()
        raw = self.decode(strokes[:, :-1], z).float()
        nll = mixture_loss_terms(raw, strokes[:, 1:], training=True, reduction="mean")
        recon = nll["offset"] + nll["pen"]
        total = recon
        if c.conditional:
            total = recon + self.kl_weight_at(batch.get("step", step)) * kl_cost
        terms.update({"loss": total, "recon": recon.detach(), "offset": nll["offset"].detach(),
                      "pen": nll["pen"].detach()})
        return terms

    # ---- generation ----------------------------------------------------------------------------
    def reference_codes(self, references: Sketches, sample_z: bool,
                        generator: torch.Generator | None) -> torch.Tensor:
        """z of each normalised reference: mu of q(z|x), or a draw from it with `sample_z`."""
        batch = {k: v.to(self.device) for k, v in
                 self.make_batch(list(references), False, np.random.default_rng(0)).items()}
        mu, presig = self.encode_dist(batch)
        if not sample_z:
            return mu
        return mu + torch.exp(presig / 2) * torch.randn(mu.shape, generator=generator, device=mu.device)

    @torch.no_grad()
    def generate(self, n: int | None = None, *, references: Sketches | None = None, seed: int = 0,
                 options: Options | None = None, **overrides) -> Sketches:
        """Unconditional (z ~ N(0, I); no z for the unconditional model) or conditioned on
        `references` (normalised sketches; z = mu, or a draw from q(z|x) with `sample_z`).
        Returns normalised sketches carrying their z."""
        self.eval()
        c = self.config
        opts = self.make_options(options, **overrides)
        greedy = self.sample_greedily(opts.greedy)
        temperature = self._temperature(opts.temperature, greedy)
        gen = self.generator(seed)
        if references is not None:
            if not c.conditional:
                raise ConfigError("an unconditional sketch-rnn cannot be conditioned on references")
            n = len(references) if n is None else min(n, len(references))
        elif n is None:
            raise ConfigError("give n (how many sketches) or references to condition on")

        def codes(lo: int, hi: int) -> torch.Tensor | None:
            # drawn batch by batch from the sampling generator, between the batches' rollouts
            if not c.conditional:
                return None
            if references is not None:
                return self.reference_codes(references[np.arange(lo, hi)], opts.sample_z, gen)
            return torch.randn(hi - lo, c.z_size, generator=gen, device=self.device)

        result = self.decode_batches(n, codes, temperature, greedy, gen, opts.batch_size)
        return self.label_samples(result, references)

    @torch.no_grad()
    def complete(self, prefix: Sketches, n_per_prefix: int = 1, *, seed: int = 0,
                 options: Options | None = None, **overrides) -> Sketches:
        """Continue each partial drawing (normalised sketches): z = mu of the prefix itself (a
        draw with `sample_z`; none for the unconditional model), the decoder primed with the
        prefix's rows and sampling on from its last row. Each result starts with its prefix."""
        opts = self.make_options(options, **overrides)

        def codes(repeated: Sketches, generator: torch.Generator) -> torch.Tensor | None:
            if not self.config.conditional:
                return None
            bs = opts.batch_size
            return torch.cat([self.reference_codes(repeated[np.arange(lo, min(lo + bs, len(repeated)))],
                                                   opts.sample_z, generator)
                              for lo in range(0, len(repeated), bs)], 0)

        return self.complete_prefixes(prefix, n_per_prefix, codes, opts, seed)


# ---- presets ---------------------------------------------------------------------------------
# magenta's default data set (`get_default_hparams`: data_set=['aaron_sheep.npz']).
PAPER_CATEGORIES = ("aaron_sheep",)


def paper_config(**overrides) -> Config:
    """The paper's model in magenta's code: the paper's HyperLSTM-2048 decoder with the encoder of
    magenta README's large-model command (layer-norm LSTM-512), z 128, magenta's `get_default_hparams` for everything else (recurrent dropout keep 0.9,
    random scale 0.15, KL weight 0.5 annealed from 0.01 at 0.99995 per step, tolerance 0.2, Adam
    1e-3 decaying 0.9999 per step to 1e-5, clip by value 1.0, batch 100), without point dropping
    (magenta's README: "not used in the sketch-rnn paper"), T = the longest sketch of the data,
    float32 everywhere (`amp=False`)."""
    base = Config(enc_model="layer_norm", enc_rnn_size=512, dec_model="hyper", dec_rnn_size=2048,
                  augment_stroke_prob=0.0, max_seq_len=-1, max_seq_len_cap=0, amp=False)
    return dataclasses.replace(base, **overrides)


def cpu_config(**overrides) -> Config:
    """A configuration that trains in under an hour on 2 CPU cores (3,000 steps; 0.86 s of one
    core per step on QuickDraw sketches, T = 143): encoder LSTM 128, decoder LSTM 256 without
    recurrent dropout (torch's native LSTM kernel), z 64, batch 64, sketches up to 150 points
    (longer ones left out, counted in a warning), lr 2e-3, KL annealed over the run (decay 0.999
    per step) to 0.5, validation on 20 batches every 250 steps. Everything else is magenta's."""
    base = Config(enc_rnn_size=128, dec_rnn_size=256, z_size=64, batch_size=64, max_seq_len=-1,
                  max_seq_len_cap=150, use_recurrent_dropout=False, learning_rate=2e-3,
                  kl_decay_rate=0.999, eval_every=250, max_valid_batches=20, max_steps=3000)
    return dataclasses.replace(base, **overrides)


__all__ = ["Config", "Options", "PAPER_CATEGORIES", "SketchRNN", "cpu_config", "paper_config"]
