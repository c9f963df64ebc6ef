"""RPCL-pix2seq (Zang, Ying & Xu, Neural Networks 2021): a sketch image -> z with a GMM prior
learned by rival-penalised EM -> a stroke sequence (after CMACH508/RPCL-pix2seq, TensorFlow:
`model.py` `Model.build_RPCL_pix2seq`, `train.py`, `sample.py`).

Reads top to bottom: config (the seed's code defaults), model (encoder, decoders and data come
from `pix2seq_common`), loss, labels and sampling, and the small CPU demo configuration.

* The prior is K = num_mixture * num_sub = 10 diagonal Gaussians with weights alpha, held as
  buffers (`nn.gmm_prior.GMMPrior`) and never touched by the optimiser: every training step's
  `loss` computes the responsibilities gamma from the OLD prior and stages an update (EMA EM
  with rate 0.05; after step 500 every third step a rival-penalised hard step instead), and
  `on_step_end` writes it after the optimiser step (`model.py` `em` / `rpcl`, chosen by the
  step in `build_RPCL_pix2seq` and assigned to `de_mu`, `de_sigma2`, `de_alpha` in the same
  `sess.run` as the gradient step).
* Loss (`build_RPCL_pix2seq`): `w_KL(s) (L_alpha + L_G) + L_R + de_weight L_D`, with w_KL(s) =
  1 - 0.999 * 0.9999^s, L_alpha = KL(gamma || alpha'), L_G the gamma-weighted Gaussian KL against
  the detached NEW prior, L_R the sequence NLL (sum over time, mean over batch), L_D the squared
  error of the deconv image decoder (summed over pixels, mean over batch).
* Elimination: the original removes nothing; components that stop winning end with alpha ~ 0
  and never win again. `n_alive` counts those with alpha above `alive_threshold`, and is logged.
* Sampling (`Pix2SeqBase.generate`): z from the learned prior, z ~ N(m_k, diag v_k) with
  k ~ alpha or k = `component` (the paper-consistent reading), or `prior="standard"`: the seed's
  own `sample.py` (`main`, `--conditional=False`) draws z ~ N(0, I).
* Responsibilities are computed in log space (a float32 softmax of log alpha + log-likelihood,
  then the seed's clip to [1e-5, 1]): identical to the seed wherever its float64 exp does not
  underflow, and near-one-hot instead of uniform where it does. `faithful_posterior=True` gives
  the seed's arithmetic.

What differs from the seed, and the switch (`paper_config` sets every one to the seed's):
* the posterior's arithmetic above (`faithful_posterior=True`);
* bf16 autocast of the sequence decoder on CUDA (`amp=False`: float32 as the seed);
* unconditional samples come from the learned prior by default; the seed's `sample.py` draws
  z ~ N(0, I) (`sample_prior="standard"`, or per call the sampling option `prior="standard"`,
  `sketchlab sample --prior standard`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from sketchlab.errors import ConfigError
from sketchlab.models.pix2seq_common import Pix2SeqBase, Pix2SeqConfig, Pix2SeqOptions
from sketchlab.nn.gmm_prior import GMMPrior
from sketchlab.nn.rpcl import ALIVE_THRESHOLD


@dataclass
class Config(Pix2SeqConfig):
    num_mixture: int = 5                 # the number of categories, NOT the output mixture (20)
    num_sub: int = 2                     # Gaussians per category: K = num_mixture * num_sub
    de_weight: float = 0.5               # weight of the image decoder's squared error
    rpcl_start: int = 500                # RPCL steps when s > rpcl_start and s % rpcl_every == 0
    rpcl_every: int = 3                  # RPCL step period (see rpcl_start)
    faithful_posterior: bool = False     # True: the seed's unshifted float64 exp (uniform on underflow)
    alive_threshold: float = ALIVE_THRESHOLD # a prior component counts as alive above this weight


# RPCL-pix2seq's sampling options are the ones both seeds share (component, prior, ...).
Options = Pix2SeqOptions


class RPCLPix2Seq(Pix2SeqBase):
    name = "rpcl-pix2seq"
    Config = Config

    def make_prior(self):
        c = self.config
        return GMMPrior(c.num_mixture * c.num_sub, c.z_size, faithful_posterior=c.faithful_posterior,
                        rpcl_start=c.rpcl_start, rpcl_every=c.rpcl_every,
                        alive_threshold=c.alive_threshold)

    # ---- loss ----------------------------------------------------------------------------------
    def loss(self, batch, step: int = 0):
        c = self.config
        x, mu, var, z = self.latent(batch)
        with torch.autocast(device_type=z.device.type, enabled=False):
            prior = self.prior(z, mu, var, step)   # stages the update in training mode
        seq = self.sequence_terms(batch, z)
        recon = seq["offset"] + seq["pen"]
        image = (x - self.reconstruct_image(z)).square().sum((1, 2)).mean()
        w = self.kl_weight_at(batch.get("step", step))
        kl = prior["loss_alpha"] + prior["loss_gauss"]
        total = w * kl + recon + c.de_weight * image
        return {
            "loss": total,
            "recon": recon.detach(),
            "offset": seq["offset"].detach(),
            "pen": seq["pen"].detach(),
            "image": image.detach(),
            "kl_alpha": prior["loss_alpha"].detach(),
            "kl_gauss": prior["loss_gauss"].detach(),
            "kl_weight": torch.as_tensor(w).detach(),
            "rpcl": torch.tensor(float(prior["rpcl"])),
            "n_alive": self.prior.alive_mask().sum().float(),
        }

    def graph_key(self, step: int):
        # The update's control flow is the only thing that changes with the step: EM or RPCL.
        return "rpcl" if self.prior.is_rpcl_step(step) else "em"

    # ---- latent labels and the prior -----------------------------------------------------------
    @torch.no_grad()
    def component_labels(self, z) -> np.ndarray:
        """The seed's `gau_label`: argmax_k gamma(z) under the stored GMM."""
        return self.prior.posterior(z.to(self.prior.mean.device)).argmax(-1).cpu().numpy()

    def latent_labels(self, z) -> dict[str, np.ndarray]:
        return {"component": self.component_labels(z)}

    def prior_weights(self):
        return self.prior.alpha

    def sample_prior(self, n, generator, options):
        return self.prior.sample(n, component=options.component, generator=generator)

# The seed's `get_default_hparams` category list (its README's example trains bee, bus).
PAPER_CATEGORIES = ("bee", "bus", "flower", "giraffe", "pig")


def paper_config(**overrides) -> Config:
    """The seed's `train.py` as released: its code defaults (batch 200, HyperLSTM 2048, z 128,
    K = 5 x 2, Adam beta1 0.5, lr 1e-3 decaying 0.9999^(s/3), early stopping rewinding to the
    best checkpoint, T = the longest sketch of the data), the seed's posterior arithmetic
    (`faithful_posterior=True`), unconditional samples from N(0, I) as its `sample.py`
    (`sample_prior="standard"`; `--prior learned` samples the learned mixture) and float32
    everywhere (`amp=False`)."""
    base = Config(faithful_posterior=True, sample_prior="standard", amp=False)
    return dataclasses.replace(base, **overrides)


def cpu_config(**overrides) -> Config:
    """A configuration that trains in under an hour on 2 CPU cores (`demo_config`'s sizes on real
    data: sketches up to 150 points, RPCL from step 500 as the seed, 5,000 steps at 0.34 s of one
    core each, validation on 20 batches every 250 steps)."""
    return demo_config(**{"max_seq_len": 150, "rpcl_start": 500, "max_steps": 5000,
                          "eval_every": 250, "max_valid_batches": 20, **overrides})


def demo_config(**overrides) -> Config:
    """A small configuration that learns the built-in doodles on a CPU in a few minutes (for
    `sketchlab demo`): CNN widths (8, 16, 32, 64), an LSTM-256 decoder without recurrent dropout
    (torch's native LSTM kernel, ~3x faster on a CPU), doodles of at most 64 points, z 32, K = 5 x 2
    Gaussians, batch 32, lr 2e-3, RPCL from step 150 (the seed's 500 assumes hundreds of thousands
    of steps), no early stopping. Everything else is the seed's."""
    base = Config(cnn_channels=(8, 16, 32, 64), dec_model="lstm", dec_rnn_size=256,
                  max_seq_len=64, recurrent_dropout_prob=1.0, z_size=32,
                  num_mixture=5, num_sub=2, batch_size=32, learning_rate=2e-3, rpcl_start=150,
                  patience=0, reload_best=False)
    return dataclasses.replace(base, **overrides)


__all__ = ["Config", "Options", "PAPER_CATEGORIES", "RPCLPix2Seq", "cpu_config", "demo_config",
           "paper_config"]
