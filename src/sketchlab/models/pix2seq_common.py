"""What RPCL-pix2seq and RPCL-pix2seqH share: image in, sketch out (after the TensorFlow code of
CMACH508/RPCL-pix2seq and CMACH508/RPCL-pix2seqH).

Both seeds have the same networks and data pipeline; they differ only in the latent prior and in
how the loss terms are weighted over the steps. This module holds the shared part once:

* the config fields and defaults both seeds' `get_default_hparams` share (code values, not the
  README's: batch 200, HyperLSTM 2048, z 128, lr 1e-3 decaying as 0.9999^(s/3), Adam beta1 0.5,
  per-element clipping at 1, early stopping with patience 5 that rewinds to the best checkpoint);
* the data: `make_batch` builds the augmented stroke-5 sequence for the decoder AND keeps the
  un-augmented sketch for the image (the seeds never re-render the image after the sequence
  augmentation), and the 48x48 image is rasterised on the device inside `loss` / `encode`
  (`rasterize_torch`: seq2png's placement, origin-inclusive box, margin 1.5, 1-px line), scaled
  to [-1, 1] with a white (+1) background; training images get the seeds' `random_scale_png`
  (`utils.py` `DataLoader.random_scale_png` -> `rescale`: in practice always a 47-px copy
  anchored top-left, since int(48 r) = 47 for every r < 1);
* the networks: CNN encoder q(z|x) = N(mu, diag var) (`nn.conv.ImageEncoder`), the HyperLSTM
  decoder fed [S_{t-1}, z] from the state tanh(FC(z)), the 20-component mixture head, and the
  deconv image decoder used as a regulariser (`nn.conv.ImageDecoder`);
* the sequence loss L_R (sum over time, mean over the batch; pen loss unmasked in training,
  masked in evaluation) and validation on L_R with z = mu;
* generation: conditioned on reference sketches (z = mu of their images), from the learned prior
  or one chosen prior component, or from N(0, I) as the originals' `sample.py` does; completing
  partial drawings; decoding codes; latent labels for maps.

Precision: under the trainer's bf16 autocast only the sequence decoder (where the time goes)
runs in bf16; the CNNs, the prior and every loss reduction stay float32, because the EM-updated
prior is fitted to mu and var and the 1e-10 variance floor means nothing in bf16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from sketchlab.config import TrainingConfig
from sketchlab.data import strokes as S
from sketchlab.data.image_aug import png_scale_sizes, shrink_top_left_batched
from sketchlab.data.raster import rasterize_torch
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError
from sketchlab.models.base import SketchModel
from sketchlab.models.code_decoder import CodeDecoder, DecoderOptions
from sketchlab.nn.cells import make_cell
from sketchlab.nn.conv import ImageDecoder, ImageEncoder, seed_linear
from sketchlab.nn.mixture import MixtureHead, mixture_loss_terms
from sketchlab.nn.rpcl import kl_weight


@dataclass
class Pix2SeqConfig(TrainingConfig):
    """Hyperparameters both seeds share (their `get_default_hparams`, code defaults)."""

    max_seq_len: int = -1                # -1: the longest sketch of the loaded data (no 250 cap)
    z_size: int = 128                    # latent code size
    dec_model: str = "hyper"             # "lstm" | "layer_norm" | "hyper"
    dec_rnn_size: int = 2048             # decoder hidden units
    hyper_num_units: int = 256           # HyperLSTM: units of the small hyper network
    hyper_embedding_size: int = 32       # HyperLSTM: size of the hyper embeddings
    use_recurrent_dropout: bool = True   # recurrent dropout in the decoder (see below)
    recurrent_dropout_prob: float = 0.90  # keep probability
    random_scale_factor: float = 0.10    # sequence: dx, dy *= U(0.9, 1.1) independently
    augment_stroke_prob: float = 0.10    # sequence: sketch-rnn point dropping
    png_width: int = 48                  # side of the rendered input image in pixels
    png_scale_ratio: float = 0.98        # image: int(48 U(0.98, 1)) = 47 px, top-left
    png_margin: float = 1.5              # pixels left free around the sketch in the input image
    png_line_width: float = 1.0          # stroke width in the input image (pixels)
    conv_init: str = "seed"              # "seed": every conv filter N(0, sqrt(2/3)); "he"
                                         # (the seeds' `Cnn.py` `xavier_init` takes the kernel
                                         # height as the fan-in)
    # CNN widths: encoder stages (layer_1, layer_2, conv0, conv1); the image decoder mirrors them.
    # The seeds' (32, 64, 128, 256); smaller only for quick CPU runs (the demo).
    cnn_channels: tuple[int, ...] = (32, 64, 128, 256)   # CNN widths (encoder stages)
    temperature: float = 0.24            # sampling temperature (sample.py's hard-coded tau)
    # Where unconditional codes come from: "learned" (the RPCL-learned mixture prior, the
    # paper-consistent reading) or "standard" (z ~ N(0, I), what the seeds' sample.py draws).
    sample_prior: str = "learned"        # free samples' codes: learned (mixture prior) | standard
    fuse_pointwise: bool = True          # torch.compile the cells' per-step pointwise math on CUDA
    kl_decay_rate: float = 0.9999        # KL warm-up w_KL(s) = 1 - 0.999 * kl_decay_rate^s (hard-coded in the seeds)
    # training (train.py of both seeds)
    batch_size: int = 200
    learning_rate: float = 1e-3
    decay_rate: float = 0.9999
    min_learning_rate: float = 1e-5
    lr_decay_every: float = 3.0          # lr = 9.9e-4 * 0.9999^(s/3) + 1e-5
    adam_beta1: float = 0.5
    grad_clip: float = 1.0
    clip_mode: str = "value"             # tf.clip_by_value on every gradient element
    eval_every: int = 0                  # validate once per epoch
    patience: int = 5
    reload_best: bool = True             # rewind to the best checkpoint after a bad epoch
    valid_metric: str = "recon"          # L_R in eval mode with z = mu


@dataclass
class Pix2SeqOptions(DecoderOptions):
    """Sampling options both seeds share: which prior the codes come from."""

    component: int | None = field(default=None, metadata={
        "help": "draw z from this prior component instead of the whole prior (RPCL; the level-k "
                "Gaussian for RPCL-pix2seqH)"})
    prior: Literal["learned", "standard"] | None = field(default=None, metadata={
        "help": "learned: z from the RPCL-learned mixture prior; standard: z ~ N(0, I), as the "
                "originals' sample.py draws it (default: the config's sample_prior, learned; "
                "the paper preset: standard)"})


def zero_touch(*modules: torch.nn.Module) -> Tensor:
    """0 x (a sum touching every parameter of `modules`).

    Added to a loss that skips a branch, it gives that branch's parameters zero (not None)
    gradients, so Adam still moves them by momentum as TF's Adam does (the originals'
    `optimizer.apply_gradients` in `model.py` updates every variable, zero gradient or not),
    from the very first step and with the same per-parameter step count as the rest."""
    params = [p for m in modules for p in m.parameters()]
    return torch.stack([p.reshape(-1)[0].float() for p in params]).sum() * 0.0


class Pix2SeqBase(CodeDecoder, SketchModel):
    """Encoder, decoders, data and generation of the two RPCL models; subclasses add the prior
    (`make_prior`), the loss (`loss`) and the latent labels (`latent_labels`, `sample_prior`)."""

    Config = Pix2SeqConfig
    Options = Pix2SeqOptions
    can_sample = True
    can_encode = True
    can_complete = True
    has_components = True

    def __init__(self, config: Pix2SeqConfig):
        super().__init__(config)
        c = config
        self.require_data_sizes("max_seq_len")
        if c.sample_prior not in ("learned", "standard"):
            raise ConfigError(f"sample_prior={c.sample_prior!r}: choose learned or standard")
        if c.png_width % 16:
            raise ConfigError(f"png_width={c.png_width}: the CNNs halve the image four times; "
                              "use a multiple of 16 (the seeds use 48)")
        keep = c.recurrent_dropout_prob if c.use_recurrent_dropout else 1.0
        if len(c.cnn_channels) != 4:
            raise ConfigError(f"cnn_channels={c.cnn_channels}: give the four encoder widths")
        self.encoder = ImageEncoder(c.z_size, c.png_width, tuple(c.cnn_channels), init=c.conv_init)
        self.decoder = make_cell(c.dec_model, 5 + c.z_size, c.dec_rnn_size, recurrent_dropout_keep=keep,
                                 hyper_num_units=c.hyper_num_units,
                                 hyper_embedding_size=c.hyper_embedding_size, fusion=c.fuse_pointwise)
        # `model.py` `build_RPCL_pix2seq`: initial state tanh(FC(z)) (`Cnn.FcNet`: He-normal std
        # sqrt(2/z), zero bias); output FC (`rnn_decoder`) std sqrt(2/H), bias 0.
        self.fc_init = seed_linear(c.z_size, self.decoder.state_size)
        self.head = MixtureHead(c.dec_rnn_size, 20, bias=True, init_std=math.sqrt(2.0 / c.dec_rnn_size))
        self.image_decoder = ImageDecoder(c.z_size, c.png_width, tuple(reversed(c.cnn_channels)),
                                          init=c.conv_init)
        self.prior = self.make_prior()

    def make_prior(self) -> torch.nn.Module:
        raise NotImplementedError

    # ---- data preparation ----------------------------------------------------------------------
    def make_batch(self, sketches, train, rng):
        """Stroke-5 decoder sequences (augmented when training) + the un-augmented stroke-3
        sketches the image is rasterised from on the device (+ the image's shrunk side)."""
        c = self.config
        T = c.max_seq_len
        seqs = sketches
        if train:
            seqs = [S.random_scale(s, c.random_scale_factor, rng) for s in sketches]
            if c.augment_stroke_prob > 0:
                seqs = [S.augment_strokes(s, c.augment_stroke_prob, rng) for s in seqs]
        strokes5 = S.pad_batch(seqs, T)  # refuses a sketch longer than max_seq_len
        raster = np.zeros((len(sketches), T, 3), np.float32)
        for i, s in enumerate(sketches):
            raster[i, :len(s)] = s
        batch = {
            "strokes": torch.from_numpy(strokes5),
            "raster_strokes": torch.from_numpy(raster),
            "raster_lengths": torch.tensor([len(s) for s in sketches], dtype=torch.long),
        }
        if train and c.png_scale_ratio < 1.0:
            sizes = png_scale_sizes(rng, len(sketches), c.png_width, c.png_scale_ratio)
            batch["png_size"] = torch.from_numpy(sizes)
        return batch

    def images(self, batch) -> Tensor:
        """The encoder's input (B, W, W) in [-1, 1], background +1: rasterised on the batch's
        device, then shrunk when the batch carries training sides. A precomputed `batch["image"]`
        (e.g. a benchmark's static CUDA-graph input) is used as is."""
        if "image" in batch:
            return batch["image"].float()
        c = self.config
        grey = rasterize_torch(batch["raster_strokes"], batch["raster_lengths"], size=c.png_width,
                               margin=c.png_margin, line_width=c.png_line_width)
        x = grey / 255.0 * 2.0 - 1.0
        if "png_size" in batch:
            x = shrink_top_left_batched(x, batch["png_size"], fill=1.0)
        return x

    # ---- networks --------------------------------------------------------------------------
    def encode_dist(self, batch) -> tuple[Tensor, Tensor, Tensor]:
        """(image, mu, var) of q(z | image), float32 even under autocast."""
        x = self.images(batch)
        with torch.autocast(device_type=x.device.type, enabled=False):
            mu, var = self.encoder(x)
        return x, mu, var

    def encode(self, batch) -> Tensor:
        """The latent code used for retrieval, maps and conditional generation: mu."""
        return self.encode_dist(batch)[1]

    def latent(self, batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(image, mu, var, z): z = mu + sqrt(var) eps in training (`model.py` `get_z`), z = mu in
        evaluation (`train.py` `evaluate_model` feeds `batch_z = mu`)."""
        x, mu, var = self.encode_dist(batch)
        z = mu + var.sqrt() * torch.randn_like(mu) if self.training else mu
        return x, mu, var, z

    def sequence_terms(self, batch, z: Tensor) -> dict[str, Tensor]:
        """L_R's parts: {"offset", "pen"}, each summed over time and averaged over the batch."""
        strokes = batch["strokes"]
        raw = self.decode(strokes[:, :-1], z)
        return mixture_loss_terms(raw, strokes[:, 1:], training=self.training,
                                  reduction="sum_time_mean_batch")

    def reconstruct_image(self, z: Tensor) -> Tensor:
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.image_decoder(z.float())

    def kl_weight_at(self, step):
        """The seeds' KL warm-up 1 - 0.999 * kl_decay_rate^s (0.9999; same in training and
        evaluation); `step` may be the batch's device tensor (CUDA-graph replay)."""
        w = kl_weight(step, decay=self.config.kl_decay_rate)
        return w.float() if torch.is_tensor(w) else torch.tensor(w)

    def prepare_step(self, batch):
        """Rasterise the training images before the step: the rasteriser's shapes depend on the
        data, so it stays outside a captured CUDA graph (the image is then a static input)."""
        batch["image"] = self.images(batch)
        return batch

    def on_step_end(self, step: int) -> None:
        """Write the prior update staged by this step's `loss` (after the optimiser step)."""
        self.prior.on_step_end()

    # ---- latent labels (subclasses) -----------------------------------------------------------
    def component_labels(self, z: Tensor) -> np.ndarray:
        """The index carried as `Sketches.component`: the most responsible prior component."""
        raise NotImplementedError

    def prior_choice(self, options) -> dict:
        """The prior's parts `options` pins (None: drawn from the prior)."""
        return {"component": options.component}

    def sample_prior(self, n: int, generator: torch.Generator, options) -> tuple[Tensor, Tensor]:
        """n codes from the learned prior (or the component / unit `options` chooses) and the
        index of the Gaussian each came from."""
        raise NotImplementedError

    def prior_weights(self) -> Tensor:
        """The prior weight of each Gaussian (K,)."""
        raise NotImplementedError

    def latent_centres(self) -> tuple[Tensor, Tensor]:
        """The prior's Gaussian means (K, D) and weights (K,), drawn on latent maps."""
        return self.prior.mean, self.prior_weights()

    def n_alive(self) -> int:
        return self.prior.n_alive()

    # ---- generation ----------------------------------------------------------------------------
    def label_codes(self, sketches: Sketches, z: Tensor) -> None:
        sketches.component = self.component_labels(z)

    @torch.no_grad()
    def generate(self, n: int | None = None, *, references: Sketches | None = None, seed: int = 0,
                 options: Pix2SeqOptions | None = None, **overrides) -> Sketches:
        """Sketches conditioned on `references` (normalised Sketches; z = mu of their images), or
        drawn from the prior: the learned one (the whole mixture, or the component / unit the
        options pin) or, with `prior="standard"`, N(0, I) as the seeds' `sample.py` does
        (`prior` None: the config's `sample_prior`, unless a component or unit is chosen).

        The result carries z, the component (the drawn Gaussian; otherwise the most responsible
        one under the stored prior) and the references' categories."""
        self.eval()
        opts = self.make_options(options, **overrides)
        greedy = self.sample_greedily(opts.greedy)
        t = self._temperature(opts.temperature, greedy)
        chosen = {k: v for k, v in self.prior_choice(opts).items() if v is not None}
        if references is not None:
            if chosen or opts.prior == "standard":
                flags = ", ".join(f"--{k}" for k in chosen) or "--prior"
                raise ConfigError(f"conditional generation takes its codes from the references; "
                                  f"drop {flags} (or the references) to sample from the prior")
            n = len(references) if n is None else min(int(n), len(references))
            z = self.encode_sketches(references[np.arange(n)], opts.batch_size)
            comp = self.component_labels(z)
        else:
            if n is None:
                raise ConfigError("give n (how many sketches) or references to condition on")
            n = int(n)
            prior_gen = torch.Generator().manual_seed(int(seed))
            prior = opts.prior or ("learned" if chosen else self.config.sample_prior)
            if prior == "standard":
                if chosen:
                    raise ConfigError(f"prior='standard' is N(0, I), which has no "
                                      f"{' or '.join(chosen)} to choose")
                z = torch.randn(n, self.config.z_size, generator=prior_gen).to(self.device)
                comp = self.component_labels(z)
            else:
                z, comp = self.sample_prior(n, prior_gen, opts)
                z = z.to(self.device)
        result = self.decode_batches(n, z, t, greedy, self.generator(seed), opts.batch_size)
        result.component = np.asarray(comp.cpu() if torch.is_tensor(comp) else comp, dtype=np.int64)
        return self.label_samples(result, references)

    @torch.no_grad()
    def complete(self, prefix: Sketches, n_per_prefix: int = 1, *, seed: int = 0,
                 options: Pix2SeqOptions | None = None, **overrides) -> Sketches:
        """Continue each partial drawing (normalised sketches): z = mu of the prefix's own image,
        the decoder primed with the prefix's rows and sampling on from its last row. Each result
        starts with its prefix and carries z and its component."""
        opts = self.make_options(options, **overrides)
        chosen = [k for k, v in self.prior_choice(opts).items() if v is not None]
        if chosen or opts.prior == "standard":
            raise ConfigError("completion takes its code from the prefix; drop "
                              f"{', '.join(chosen) or 'prior'}")
        return self.complete_prefixes(prefix, n_per_prefix,
                                      lambda repeated, gen: self.encode_sketches(repeated, opts.batch_size),
                                      opts, seed)


__all__ = ["Pix2SeqBase", "Pix2SeqConfig", "Pix2SeqOptions", "zero_touch"]
