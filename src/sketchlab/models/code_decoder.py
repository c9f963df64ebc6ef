"""The sequence decoder the seeds after sketch-rnn share: magenta's cell fed [S_{t-1}, z] from the
state tanh(FC(z)), the 20-component mixture head, a fixed-length rollout at temperature tau.

RPCL-pix2seq(H), SP-gra2seq and SketchGloc differ in their encoders and losses, not here. A model
mixes `CodeDecoder` in before `SketchModel` and provides `self.decoder` (a `make_cell` cell),
`self.fc_init` (z -> the cell's full state), `self.head` (a `MixtureHead`) and the config fields
`max_seq_len` (-1: the longest sketch of the data) and `temperature` (the seeds' tau, 0.24).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from sketchlab.data import strokes as S
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError
from sketchlab.nn.sampler import sample_sequences


class CodeDecoder:
    # Compute the mixture head in float32 under bf16 autocast: for a decoder of ABSOLUTE positions
    # (SketchGloc) bf16's 8-bit mantissa rounds the means ~8x coarser than for offsets.
    fp32_head: bool = False

    def require_data_sizes(self, *fields: str) -> None:
        """Refuse a config whose data-dependent sizes (`adapt_config` fills them) are unset."""
        for field in fields:
            value = getattr(self.config, field)
            if value <= 0:
                raise ConfigError(
                    f"{field}={value}: {self.name} takes it from the data; `sketchlab train` fills "
                    "it in, set it explicitly to build a model by hand")

    @classmethod
    def adapt_config(cls, config, splits):
        """max_seq_len = the longest sketch over every loaded split, unless set: the seeds filter
        nothing out and roll out that many steps when sampling."""
        if config.max_seq_len > 0:
            return config
        longest = max(int(sk.lengths.max()) for sk in splits.values() if len(sk))
        return dataclasses.replace(config, max_seq_len=longest)

    def initial_state(self, z: Tensor) -> Tensor:
        """tanh(FC(z)), kept float32 under autocast (the cells keep their state in float32)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return torch.tanh(self.fc_init(z.float()))

    def decode(self, inputs: Tensor, z: Tensor) -> Tensor:
        """Teacher-forced: stroke-5 inputs (B, T, 5) and z -> raw mixture parameters (B, T, 123)."""
        B, T, _ = inputs.shape
        x = torch.cat([inputs, z.unsqueeze(1).expand(B, T, z.shape[-1]).to(inputs.dtype)], -1)
        h, _ = self.decoder.sequence(x, self.initial_state(z))
        if self.fp32_head:
            with torch.autocast(device_type=h.device.type, enabled=False):
                return self.head(h.float())
        return self.head(h)

    def _temperature(self, temperature, greedy) -> float:
        t = self.config.temperature if temperature is None else float(temperature)
        if t <= 0 and not greedy:
            raise ConfigError(f"temperature must be > 0 (got {t}); use greedy=True for argmax")
        return t

    def rollout_to_stroke3(self, seq5: np.ndarray) -> np.ndarray:
        """One sampled stroke-5 rollout -> normalised stroke-3 offsets, cut at the first
        end-of-sketch row (a model whose decoder draws absolute positions converts here)."""
        return S.stroke5_to_stroke3(seq5)

    @torch.no_grad()
    def decode_z(self, z: Tensor, temperature: float, greedy: bool = False,
                 generator: torch.Generator | None = None) -> list[np.ndarray]:
        """One sketch per code: the seeds' fixed max_seq_len rollout at temperature tau."""
        seq = sample_sequences(self.decoder, self.head, self.initial_state(z), self.config.max_seq_len,
                               z=z.float(), temperature=temperature, greedy=greedy, generator=generator)
        return [self.rollout_to_stroke3(s) for s in seq.float().cpu().numpy()]

    def label_codes(self, sketches: Sketches, z: Tensor) -> None:
        """Attach labels of the codes to decoded sketches (RPCL: the prior component)."""

    @torch.no_grad()
    def decode_codes(self, z, *, temperature=None, seed=0, greedy=False) -> Sketches:
        """Decode codes (N, z_size) into normalised sketches that carry their z (greedily too
        when the config says the original samples greedily: SketchGloc's root variant)."""
        self.eval()
        greedy = bool(greedy) or bool(getattr(self.config, "greedy_sampling", False))
        t = self._temperature(temperature, greedy)
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        z = torch.as_tensor(z).to(self.device, torch.float32)
        out = Sketches.from_list(self.decode_z(z, t, greedy, gen), scale_factor=self.scale_factor)
        out.z = z.cpu().numpy()
        self.label_codes(out, z)
        return out

    def decode_batches(self, z: Tensor, temperature: float, greedy: bool, seed: int,
                       batch_size: int) -> Sketches:
        """Decode many codes `batch_size` at a time with one generator seeded by `seed`."""
        if batch_size is None or int(batch_size) < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        out = []
        for lo in range(0, len(z), int(batch_size)):
            out += self.decode_z(z[lo:lo + int(batch_size)], temperature, greedy, gen)
        result = Sketches.from_list(out, scale_factor=self.scale_factor)
        result.z = z.float().cpu().numpy()
        return result


__all__ = ["CodeDecoder"]
