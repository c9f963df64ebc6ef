"""The sequence decoder sketch-rnn and the seeds after it share: magenta's cell fed [S_{t-1}, z]
from the state tanh(FC(z)), the 20-component mixture head, a fixed-length rollout at temperature
tau (magenta `model.py` `sample`).

sketch-rnn, RPCL-pix2seq(H), SP-gra2seq and SketchGloc differ in their encoders and losses, not
here. A model mixes `CodeDecoder` in before `SketchModel` and provides `self.decoder` (a
`make_cell` cell), `self.fc_init` (z -> the cell's full state), `self.head` (a `MixtureHead`) and
the config fields `max_seq_len` (-1: the longest sketch of the data) and `temperature` (the
seeds' tau, 0.24). A decoder without a code (the unconditional sketch-rnn: no `fc_init`) is fed
S_{t-1} alone from a zero state: pass z = None.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from sketchlab.data import strokes as S
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError, DataError
from sketchlab.models.base import SampleOptions
from sketchlab.nn.mixture import draw_noise, sample_step
from sketchlab.nn.sampler import sample_sequences


@dataclass
class DecoderOptions(SampleOptions):
    """Sampling options of the sequence decoders."""

    greedy: bool | None = field(default=None, metadata={
        "help": "pick the most likely mixture component and pen state instead of sampling"})


# Codes for `decode_batches`: a (N, D) tensor, None (no code), or a function (lo, hi) -> the
# codes of sketches lo..hi-1, called just before their batch is decoded.
Codes = Tensor | None | Callable[[int, int], Tensor | None]


class CodeDecoder:
    # Compute the mixture head in float32 under bf16 autocast: for a decoder of ABSOLUTE positions
    # (SketchGloc) bf16's 8-bit mantissa rounds the means ~8x coarser than for offsets.
    fp32_head: bool = False

    def require_data_sizes(self, *fields: str) -> None:
        """Refuse a config whose data-dependent sizes (`adapt_config` fills them) are unset."""
        for name in fields:
            value = getattr(self.config, name)
            if value <= 0:
                raise ConfigError(
                    f"{name}={value}: {self.name} takes it from the data; `sketchlab train` fills "
                    "it in, set it explicitly to build a model by hand")

    @classmethod
    def adapt_config(cls, config, splits):
        """max_seq_len = the longest sketch over every loaded split, unless set: the seeds filter
        nothing out and roll out that many steps when sampling."""
        if config.max_seq_len > 0:
            return config
        longest = max(int(sk.lengths.max()) for sk in splits.values() if len(sk))
        return dataclasses.replace(config, max_seq_len=longest)

    # ---- the decoder -----------------------------------------------------------------------------
    def initial_state(self, z: Tensor | None, batch_size: int | None = None,
                      device: torch.device | None = None) -> Tensor:
        """tanh(FC(z)), kept float32 under autocast (the cells keep their state in float32); a
        zero state of `batch_size` rows when there is no code."""
        if z is None:
            return torch.zeros(batch_size, self.decoder.state_size,
                               device=self.device if device is None else device)
        with torch.autocast(device_type=z.device.type, enabled=False):
            return torch.tanh(self.fc_init(z.float()))

    def dropout_inputs(self, x: Tensor) -> Tensor:
        """Dropout on the decoder's inputs in training (none by default; sketch-rnn's option)."""
        return x

    def dropout_outputs(self, h: Tensor) -> Tensor:
        """Dropout on the decoder's outputs in training (none by default; sketch-rnn's option)."""
        return h

    def mixture(self, h: Tensor) -> Tensor:
        """The head's raw mixture parameters of decoder outputs h."""
        if self.fp32_head:
            with torch.autocast(device_type=h.device.type, enabled=False):
                return self.head(h.float())
        return self.head(h)

    def decode(self, inputs: Tensor, z: Tensor | None) -> Tensor:
        """Teacher-forced: stroke-5 inputs (B, T, 5) and z (or None) -> raw mixture parameters
        (B, T, 6M+3)."""
        B, T, _ = inputs.shape
        x = inputs
        if z is not None:
            x = torch.cat([inputs, z.unsqueeze(1).expand(B, T, z.shape[-1]).to(inputs.dtype)], -1)
        h, _ = self.decoder.sequence(self.dropout_inputs(x), self.initial_state(z, B, inputs.device))
        return self.mixture(self.dropout_outputs(h))

    # ---- sampling ------------------------------------------------------------------------------
    def greedy_by_default(self) -> bool:
        """Whether the model's original samples greedily (SketchGloc's root variant)."""
        return False

    def sample_greedily(self, greedy: bool | None) -> bool:
        return self.greedy_by_default() if greedy is None else bool(greedy)

    def _temperature(self, temperature, greedy) -> float:
        t = self.config.temperature if temperature is None else float(temperature)
        if t <= 0 and not greedy:
            raise ConfigError(f"temperature must be > 0 (got {t}); for the most likely strokes "
                              f"sample greedily: --greedy (Python: greedy=True)")
        return t

    def generator(self, seed: int) -> torch.Generator:
        """The sampling generator: on the model's device, seeded."""
        return torch.Generator(device=self.device).manual_seed(int(seed))

    def rollout_to_stroke3(self, seq5: np.ndarray) -> np.ndarray:
        """One sampled stroke-5 rollout -> normalised stroke-3 offsets, cut at the first
        end-of-sketch row (a model whose decoder draws absolute positions converts here)."""
        return S.stroke5_to_stroke3(seq5)

    @torch.no_grad()
    def decode_z(self, z: Tensor | None, temperature: float, greedy: bool = False,
                 generator: torch.Generator | None = None, n: int | None = None) -> list[np.ndarray]:
        """One sketch per code (or `n` without codes): the seeds' fixed max_seq_len rollout at
        temperature tau."""
        n = len(z) if z is not None else int(n)
        seq = sample_sequences(self.decoder, self.head, self.initial_state(z, n), self.config.max_seq_len,
                               z=None if z is None else z.float(), temperature=temperature,
                               greedy=greedy, generator=generator)
        return [self.rollout_to_stroke3(s) for s in seq.float().cpu().numpy()]

    def decode_batches(self, n: int, codes: Codes, temperature: float, greedy: bool,
                       generator: torch.Generator, batch_size: int) -> Sketches:
        """Decode `n` sketches `batch_size` at a time, drawing from `generator`. A function for
        `codes` is called batch by batch, so codes it draws from the same generator interleave
        with the decoding (sketch-rnn's loop). The result carries the codes as z."""
        out, zs = [], []
        for lo in range(0, n, int(batch_size)):
            hi = min(n, lo + int(batch_size))
            z = codes(lo, hi) if callable(codes) else (None if codes is None else codes[lo:hi])
            if z is not None:
                zs.append(z.float().cpu())
            out += self.decode_z(z, temperature, greedy, generator, n=hi - lo)
        result = Sketches.from_list(out, scale_factor=self.scale_factor)
        if zs:
            result.z = torch.cat(zs, 0).numpy()
        return result

    def label_codes(self, sketches: Sketches, z: Tensor) -> None:
        """Attach labels of the codes to decoded sketches (RPCL: the prior component)."""

    @torch.no_grad()
    def decode_codes(self, z, *, temperature=None, seed=0, greedy=False) -> Sketches:
        """Decode codes (N, z_size) into normalised sketches that carry their z (greedily too
        when the original samples greedily: SketchGloc's root variant)."""
        self.require("can_encode", "decode latent codes")
        self.eval()
        greedy = bool(greedy) or self.greedy_by_default()
        t = self._temperature(temperature, greedy)
        z = torch.as_tensor(z).to(self.device, torch.float32)
        out = Sketches.from_list(self.decode_z(z, t, greedy, self.generator(seed)),
                                 scale_factor=self.scale_factor)
        out.z = z.cpu().numpy()
        self.label_codes(out, z)
        return out

    # ---- completion ----------------------------------------------------------------------------
    @torch.no_grad()
    def continue_rows(self, prefix5: Tensor, lengths: Tensor, z: Tensor | None, temperature: float,
                      greedy: bool, generator: torch.Generator | None) -> Tensor:
        """Teacher-force each prefix through the decoder, then sample on from its last row.

        `prefix5` (B, T+1, 5) holds stroke-5 rows starting with S0 (`strokes.pad_batch`, T =
        max_seq_len) and `lengths` (B,) each prefix's real rows L_b. Step t feeds row t: the
        prefix's own row while t <= L_b, else the row drawn at step t-1, so the continuation
        starts from the prefix's last row with the state its rows built. Returns the (B, T, 5)
        rows drawn at each step (sampler noise `draw_noise((T, B))`, one row per step as
        `nn.sampler.BatchedSampler`); rows L_b.. of sketch b are its continuation.
        """
        T = self.config.max_seq_len
        B, device = prefix5.shape[0], prefix5.device
        state = self.initial_state(z, B, device)
        noise = draw_noise((T, B), device, generator, state.dtype)
        steps = torch.arange(1, T + 1, device=device)
        forced = (steps[None, :] <= lengths.to(device)[:, None]).unsqueeze(-1)   # next input is a prefix row
        zf = None if z is None else z.float()
        out = state.new_empty(B, T, 5)
        prev = prefix5[:, 0]
        for t in range(T):
            x = prev if zf is None else torch.cat([prev, zf], 1)
            h, state = self.decoder.step(x, state)
            row = sample_step(self.mixture(h), temperature, greedy=greedy, noise=noise[t])
            out[:, t] = row
            prev = torch.where(forced[:, t], prefix5[:, t + 1], row)
        return out

    @torch.no_grad()
    def complete_prefixes(self, prefix: Sketches, n_per_prefix: int,
                          codes: Callable[[Sketches, torch.Generator], Tensor | None],
                          options, seed: int) -> Sketches:
        """`complete` of a sequence decoder: each prefix (normalised stroke-3) is repeated
        `n_per_prefix` times, `codes(repeated, generator)` gives the decoder's z (or None; drawn
        first from the sampling generator), and each copy is primed with its prefix and continued
        (`continue_rows`). Results = prefix + continuation,
        cut at the first end-of-sketch row, carrying z and the prefix's category."""
        self.eval()
        T = self.config.max_seq_len
        if len(prefix) == 0:
            raise DataError("complete: no prefix sketch given")
        if int(n_per_prefix) < 1:
            raise ConfigError(f"n_per_prefix must be >= 1, got {n_per_prefix}")
        for i, n in enumerate(prefix.lengths.tolist()):
            if n == 0:
                raise DataError(f"complete: prefix {i} is empty; use generate to draw from scratch")
            if n > T:
                raise DataError(f"complete: prefix {i} has {n} points; this model draws at most "
                                f"max_seq_len={T}")
        greedy = self.sample_greedily(options.greedy)
        t = self._temperature(options.temperature, greedy)
        gen = self.generator(seed)
        repeated = prefix.select(np.repeat(np.arange(len(prefix)), int(n_per_prefix)))
        z_all = codes(repeated, gen)
        out = []
        bs = int(options.batch_size)
        for lo in range(0, len(repeated), bs):
            items = [repeated[i] for i in range(lo, min(len(repeated), lo + bs))]
            lengths = torch.tensor([len(s) for s in items])
            prefix5 = torch.from_numpy(S.pad_batch(items, T)).to(self.device)
            z = None if z_all is None else z_all[lo:lo + len(items)]
            rows = self.continue_rows(prefix5, lengths, z, t, greedy, gen).float().cpu().numpy()
            for s, n, r in zip(items, lengths.tolist(), rows):
                out.append(np.concatenate([s, S.stroke5_to_stroke3(r[n:])], 0))
        result = Sketches.from_list(out, scale_factor=self.scale_factor)
        if z_all is not None:
            result.z = z_all.float().cpu().numpy()
            self.label_codes(result, z_all)
        return result.with_categories_of(repeated)


__all__ = ["CodeDecoder", "DecoderOptions"]
