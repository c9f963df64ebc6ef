"""RPCL-pix2seqH (Zang et al., TNNLS 2023): RPCL-pix2seq with a two-level latent hierarchy
(after CMACH508/RPCL-pix2seqH, TensorFlow: `model.py` `Model.build_RPCL_pix2seqH`, `train.py`).

The networks, data and sampling are RPCL-pix2seq's (`pix2seq_common`). What differs:

* The prior `p(z) = sum_i q(i) sum_j q(j|i) N(z; m_j, v_j)`: J = 16 level-k Gaussians shared by
  I = 16 level-l units (`nn.hierarchy_prior.HierarchicalPrior`; I must equal J). Buffers again, updated
  by EMA EM and, after step 100 on every third step, by RPCL on both levels; q(j|i) by the
  co-responsibility "merge" rule. Unlike pix2seq, the posteriors in the loss are computed
  after the update and gradient flows through it (`update_em` / `update_rpcl` return `p_j`,
  `p_i`, `p_ji` built from the new means and variances; `build_RPCL_pix2seqH` stops the gradient
  only on the prior arguments of the KL terms).
* The KL term is the "structural constraint" L_IJ = KL(q(j, i | x) || q(i) q(j|i)) plus the
  gamma-weighted Gaussian KL L_G, times 0.1 * w_KL(s).
* The image branch (L1 loss) is a short pre-training regulariser (`build_RPCL_pix2seqH`'s
  `self.loss`):

      s < 1000 and s % 4 != 0:  L = 0.1 w_KL (L_IJ + L_G) + L_D     (image steps: no L_R)
      otherwise:                L = 0.1 w_KL (L_IJ + L_G) + L_R     (the deconv branch gets 0)

  The branch a step skips still receives zero gradients (`zero_touch`), so Adam moves it by
  momentum as TF's Adam does. `de_weight` does not exist here (the seed ignores it).
* Evaluation computes every term; its "loss" is the sequence-phase total.

What differs from the seed, and the switch (`paper_config` sets every one to the seed's):
* bf16 autocast of the sequence decoder on CUDA (`amp=False`: float32 as the seed);
* validation every epoch, as the seed, but an evaluation inside the image phase (s < 1000)
  never counts against patience (`patience_start`; the seed's first validation comes after a
  whole epoch anyway);
* latent labels come from the stored prior (the seed's `sample.py` reads them off a
  batch-updated posterior: `i_label` / `j_label` of `model.py` `update_em` run on the batch of
  codes being decoded);
* unconditional samples come from the learned prior by default; the seed's `sample.py` draws
  z ~ N(0, I) (`sample_prior="standard"`, or per call `prior="standard"`, `sketchlab sample
  --prior standard`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from sketchlab.models.pix2seq_common import Pix2SeqBase, Pix2SeqConfig, Pix2SeqOptions, zero_touch
from sketchlab.nn.hierarchy_prior import HierarchicalPrior
from sketchlab.nn.rpcl import ALIVE_THRESHOLD


@dataclass
class Config(Pix2SeqConfig):
    num_layer_j: int = 16                # level-k Gaussians
    num_layer_i: int = 16                # level-l units (must equal num_layer_j)
    rpcl_start: int = 100                # RPCL steps when s > rpcl_start and s % rpcl_every == 0
    rpcl_every: int = 3                  # RPCL step period (see rpcl_start)
    kl_multiplier: float = 0.1           # L = 0.1 w_KL (L_IJ + L_G) + ...
    image_phase_steps: int = 1000        # the image branch is trained while s < this ...
    image_phase_every: int = 4           # ... on the steps with s % 4 != 0
    # The seeds' first validation comes after a whole epoch (1,749 steps), past the image phase;
    # validating every N steps, we do not count (or rewind on) evaluations inside that phase,
    # where only 1 step in 4 trains the sequence decoder.
    patience_start: int = 1000
    alive_threshold: float = ALIVE_THRESHOLD # a prior component counts as alive above this weight


@dataclass
class Options(Pix2SeqOptions):
    """RPCL-pix2seqH's sampling options: its prior has two levels to choose from."""

    unit: int | None = field(default=None, metadata={
        "help": "draw z from this level-l unit of the hierarchical prior (RPCL-pix2seqH)"})


class RPCLPix2SeqH(Pix2SeqBase):
    name = "rpcl-pix2seqh"
    Config = Config
    Options = Options

    def make_prior(self):
        c = self.config
        return HierarchicalPrior(c.num_layer_j, c.num_layer_i, c.z_size, rpcl_start=c.rpcl_start,
                                 rpcl_every=c.rpcl_every, alive_threshold=c.alive_threshold)

    # ---- loss ----------------------------------------------------------------------------------
    def is_image_step(self, step: int) -> bool:
        """Steps that train the image branch instead of the sequence decoder (`model.py`
        `build_RPCL_pix2seqH`: `global_ < 1000` and `global_ % 4 != 0`)."""
        c = self.config
        return step < c.image_phase_steps and step % c.image_phase_every != 0

    def loss(self, batch, step: int = 0):
        c = self.config
        x, mu, var, z = self.latent(batch)
        with torch.autocast(device_type=z.device.type, enabled=False):
            prior = self.prior(z, mu, var, step)   # update with gradient; stages it when training
        w = c.kl_multiplier * self.kl_weight_at(batch.get("step", step))
        total = w * (prior["loss_ij"] + prior["loss_gauss"])
        image_step = self.is_image_step(step)
        terms = {}
        if not self.training or image_step:
            image = (x - self.reconstruct_image(z)).abs().sum((1, 2)).mean()
            terms["image"] = image.detach()
        if not self.training or not image_step:
            seq = self.sequence_terms(batch, z)
            recon = seq["offset"] + seq["pen"]
            terms.update(recon=recon.detach(), offset=seq["offset"].detach(), pen=seq["pen"].detach())
        if not self.training:
            total = total + recon
        elif image_step:
            total = total + image + zero_touch(self.decoder, self.fc_init, self.head)
        else:
            total = total + recon + zero_touch(self.image_decoder)
        q_j = self.prior_weights()
        terms.update({
            "loss": total,
            "kl_ij": prior["loss_ij"].detach(),
            "kl_gauss": prior["loss_gauss"].detach(),
            "kl_weight": torch.as_tensor(w).detach(),
            "rpcl": torch.tensor(float(prior["rpcl"])),
            "image_step": torch.tensor(float(image_step and self.training)),
            "n_alive": (q_j > c.alive_threshold).sum().float(),
            "n_alive_units": (self.prior.q_i > c.alive_threshold).sum().float(),
        })
        return terms

    def graph_key(self, step: int):
        # Image-branch vs sequence steps, and EM vs RPCL updates: up to four graphs.
        return ("image" if self.is_image_step(step) else "sequence",
                "rpcl" if self.prior.is_rpcl_step(step) else "em")

    # ---- latent labels and the prior -----------------------------------------------------------
    @torch.no_grad()
    def latent_labels(self, z) -> dict[str, np.ndarray]:
        """Level-k Gaussian and level-l unit of each code under the STORED prior (the seed's
        `sample.py` reads `i_label` / `j_label` off the posterior after a 0.05 EMA update on the
        batch of codes being decoded instead, so its labels depend on the batch)."""
        post = self.prior.posterior(z.to(self.prior.mean.device))
        return {"level_k": post.p_j.argmax(-1).cpu().numpy(),
                "level_l": post.p_i.argmax(-1).cpu().numpy()}

    def component_labels(self, z) -> np.ndarray:
        return self.latent_labels(z)["level_k"]

    def prior_weights(self):
        """q(j) = sum_i q(j|i) q(i) of each level-k Gaussian (never stored: the original computes it
        as `q_j_old = tf.matmul(q_ji_old, q_i_old)` in `update_em` / `update_rpcl`)."""
        return self.prior.q_j()

    def n_alive_units(self) -> int:
        return self.prior.n_alive_units()

    def prior_choice(self, options) -> dict:
        return {"component": options.component, "unit": options.unit}

    def sample_prior(self, n, generator, options):
        """i ~ q(i), j ~ q(j|i), z ~ N(m_j, v_j); `unit=i` fixes the level-l unit, `component=j`
        the level-k Gaussian."""
        z, j, _ = self.prior.sample(n, component=options.component, unit=options.unit,
                                    generator=generator)
        return z, j

# The seed's `get_default_hparams` category list.
PAPER_CATEGORIES = ("bee", "bus", "car", "cat", "flower", "giraffe", "horse", "pig")


def paper_config(**overrides) -> Config:
    """The seed's `train.py` as released: its code defaults (batch 200, HyperLSTM 2048, z 128,
    J = I = 16, Adam beta1 0.5, the image phase for s < 1000, early stopping rewinding to the
    best checkpoint, T = the longest sketch of the data), unconditional samples from N(0, I) as
    its `sample.py` (`sample_prior="standard"`), every validation counted against patience as
    the seed's (`patience_start=0`) and float32 everywhere (`amp=False`)."""
    base = Config(sample_prior="standard", patience_start=0, amp=False)
    return dataclasses.replace(base, **overrides)


def cpu_config(**overrides) -> Config:
    """A configuration that trains in under an hour on 2 CPU cores (`demo_config`'s sizes on real
    data: sketches up to 150 points, the seed's 1,000-step image phase, 5,000 steps of at most
    0.34 s of one core each, validation on 20 batches every 250 steps)."""
    return demo_config(**{"max_seq_len": 150, "image_phase_steps": 1000, "max_steps": 5000,
                          "eval_every": 250, "max_valid_batches": 20, **overrides})


def demo_config(**overrides) -> Config:
    """A small CPU configuration for `sketchlab demo` on the built-in doodles (see
    `rpcl_pix2seq.demo_config`): CNN widths (8, 16, 32, 64), LSTM-256, z 32, J = I = 16,
    batch 32, and an image phase of 200 steps instead of 1000 (the seed's schedule assumes far
    longer training)."""
    base = Config(cnn_channels=(8, 16, 32, 64), dec_model="lstm", dec_rnn_size=256,
                  max_seq_len=64, recurrent_dropout_prob=1.0, z_size=32,
                  batch_size=32, learning_rate=2e-3, image_phase_steps=200, patience=0,
                  reload_best=False)
    return dataclasses.replace(base, **overrides)


__all__ = ["Config", "Options", "PAPER_CATEGORIES", "RPCLPix2SeqH", "cpu_config", "demo_config",
           "paper_config"]
