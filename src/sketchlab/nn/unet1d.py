"""The 1-D UNet denoiser of SketchKnitter (Wang et al., ICLR 2023): guided-diffusion's UNet in 1-D.

Two layouts of the same network body:

* ``layout="points"`` (the original, wangqiang9/SketchKnitter `sketch_diffusion/unet.py`
  `UNetModel`): each point's features are lifted by a shared ``Linear(F_in -> lift_dim)`` and
  the **points are the Conv1d channels**; the 1-D "sequence" the convolutions slide over is the
  lifted feature axis (128 -> 64 -> 32 -> 16). Every point index
  has its own weights, so the number of points must equal ``model_channels`` (96) and be a
  multiple of 32 (GroupNorm(32)). With the defaults the network has 20.33M parameters.
* ``layout="sequence"`` (optional, not in the paper): the usual layout, features are channels and
  the points are the sequence, ``Conv1d(F_in -> model_channels)`` stem; translation-equivariant.

Module names mirror the original (``input_blocks.0.0``, ``middle_block.1.qkv``,
``pen_state_out.0``...) so a state dict of the original ``UNetModel`` loads into
``layout="points", in_features=2`` unchanged.

Attention exists only in the middle block: the original's ``attention_resolutions`` never match
(`script_util.py` `create_model` turns "16,8" into ds 6 and 12, while the UNet's ds is 1, 2, 4 or
8), so it is not a parameter here.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sketchlab.errors import ConfigError

__all__ = ["UNet1D", "timestep_embedding", "GroupNorm32", "ResBlock", "AttentionBlock"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding `(B,) -> (B, dim)` in guided-diffusion's **[cos, sin]** order.

    `t` is a float timestep (the caller rescales it to the 0..1000 range); computed in float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with float32 statistics whatever the activations' dtype (as the original).

    float16 inputs are cast to float32 as the original does; bfloat16 inputs use the native
    kernel, which accumulates in float32 and saves two casts per norm on the fast path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.float32 if x.dtype == torch.float16 else x.dtype
        w = None if self.weight is None else self.weight.to(dtype)
        b = None if self.bias is None else self.bias.to(dtype)
        return F.group_norm(x.to(dtype), self.num_groups, w, b, self.eps).to(x.dtype)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


class TimestepEmbedSequential(nn.Sequential):
    """A sequential whose `ResBlock` members also receive the timestep embedding."""

    def forward(self, x, emb):  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ResBlock(nn.Module):
    """GN-SiLU-Conv, scale-shift norm from the embedding, GN-SiLU-Dropout-Conv(zero), skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None,
                 dropout: float = 0.0, use_scale_shift_norm: bool = True):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(32, channels), nn.SiLU(),
                                       nn.Conv1d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, (2 if use_scale_shift_norm else 1) * out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels), nn.SiLU(), nn.Dropout(dropout),
            _zero(nn.Conv1d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv1d(channels, out_channels, 1))

    def forward(self, x, emb):
        h = self.in_layers(x)
        e = self.emb_layers(emb.to(h.dtype))[..., None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the length axis with guided-diffusion's *legacy* head-then-qkv order.

    `qkv (B, 3C, L)` is viewed as `(B*heads, 3*C/heads, L)` and split into q, k, v (`unet.py`
    `AttentionBlock._forward` / `QKVAttention`), so a ported checkpoint's weights mean the same
    thing here.
    """

    def __init__(self, channels: int, num_heads: int = 4):
        super().__init__()
        if channels % num_heads:
            raise ConfigError(f"attention: {channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = GroupNorm32(32, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x):
        b, c, length = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, self.num_heads, 3 * c // self.num_heads, length)
        q, k, v = (z.transpose(-1, -2) for z in qkv.chunk(3, dim=2))  # (B, H, L, ch) each
        # softmax(q k^T / sqrt(ch)) v; the fused kernels accumulate the softmax in float32.
        h = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, length)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv1d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet1D(nn.Module):
    """Points `(B, N, in_features)` and float timesteps `(B,)` -> eps `(B, N, 2)`, pen logits `(B, N, 2)`.

    `t` must already be rescaled to the 0..1000 range (the original's `rescale_timesteps=True`).
    """

    def __init__(self, num_points: int = 96, in_features: int = 2, model_channels: int = 96,
                 lift_dim: int = 128, channel_mult: tuple[int, ...] = (1, 2, 3, 4),
                 num_res_blocks: int = 2, num_heads: int = 4, dropout: float = 0.0,
                 use_scale_shift_norm: bool = True, layout: str = "points", pen_classes: int = 2,
                 num_classes: int = 0):
        super().__init__()
        if layout not in ("points", "sequence"):
            raise ConfigError(f"unet layout must be 'points' or 'sequence', got {layout!r}")
        levels = len(channel_mult)
        length = lift_dim if layout == "points" else num_points
        if layout == "points" and num_points != model_channels:
            raise ConfigError(
                f"layout='points' makes the points the Conv1d channels, so num_points ({num_points}) "
                f"must equal model_channels ({model_channels})")
        if length % (2 ** (levels - 1)):
            raise ConfigError(f"the conv length {length} must be divisible by 2**{levels - 1}")
        for m in channel_mult:
            if (m * model_channels) % 32:
                raise ConfigError(f"channels {m * model_channels} are not a multiple of 32 "
                                  "(GroupNorm(32))")
        self.layout = layout
        self.num_points = num_points
        self.in_features = in_features
        self.model_channels = model_channels
        emb_dim = 4 * model_channels

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        # Class-conditional (improved-diffusion's `class_cond`, which SketchKnitter's code keeps):
        # a learned embedding of the label is added to the timestep embedding.
        self.num_classes = num_classes
        self.label_emb = nn.Embedding(num_classes, emb_dim) if num_classes > 0 else None

        def res(ch_in, ch_out):
            return ResBlock(ch_in, emb_dim, ch_out, dropout, use_scale_shift_norm)

        stem = (nn.Linear(in_features, lift_dim) if layout == "points"
                else nn.Conv1d(in_features, model_channels, 3, padding=1))
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(stem)])
        skip_channels = [model_channels]
        ch = model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.input_blocks.append(TimestepEmbedSequential(res(ch, mult * model_channels)))
                ch = mult * model_channels
                skip_channels.append(ch)
            if level != levels - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)

        self.middle_block = TimestepEmbedSequential(res(ch, ch), AttentionBlock(ch, num_heads),
                                                    res(ch, ch))
        self.middle_channels = ch

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers: list[nn.Module] = [res(ch + skip_channels.pop(), mult * model_channels)]
                ch = mult * model_channels
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        if layout == "points":
            # Heads act on the lifted feature axis of each point; GN groups the point channels.
            self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), _zero(nn.Linear(lift_dim, 2)))
            self.pen_state_out = nn.Sequential(nn.Linear(lift_dim, pen_classes))
        else:
            self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(),
                                     _zero(nn.Conv1d(ch, 2, 3, padding=1)))
            self.pen_state_out = nn.Sequential(nn.Conv1d(ch, pen_classes, 1))

    @property
    def dtype(self) -> torch.dtype:
        return self.input_blocks[0][0].weight.dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, return_features: bool = False,
                y: torch.Tensor | None = None):
        if x.shape[1] != self.num_points or x.shape[2] != self.in_features:
            raise ValueError(f"UNet1D expects (B, {self.num_points}, {self.in_features}), "
                             f"got {tuple(x.shape)}")
        if (y is not None) != (self.label_emb is not None):
            raise ValueError("a class-conditional UNet1D needs labels y, an unconditional one "
                             "takes none")
        emb_in = timestep_embedding(t, self.model_channels).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(emb_in)
        if y is not None:
            emb = emb + self.label_emb(y).to(emb.dtype)
        h = x.to(self.dtype)
        if self.layout == "sequence":
            h = h.transpose(1, 2)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        middle = h
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        eps, pen = self.out(h), self.pen_state_out(h)
        if self.layout == "sequence":
            eps, pen = eps.transpose(1, 2), pen.transpose(1, 2)
        if return_features:
            return eps, pen, middle
        return eps, pen
