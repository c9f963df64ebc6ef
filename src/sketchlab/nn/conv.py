"""Convolution pieces with TensorFlow 'SAME' semantics, and RPCL-pix2seq's image encoder/decoder.

The Zang-lab seeds (RPCL-pix2seq, RPCL-pix2seqH; `Cnn.py`) use TF 1.x layers whose behaviour
differs from PyTorch's defaults in ways that shift every feature map by a pixel (`Cnn.py`
`ConvNet.build_conv_layer` / `build_deconv_layer`, `DilatedConv`, `FcNet`):

* 'SAME' padding puts the odd pixel of padding at the bottom/right: a stride-2, 3x3 conv on an
  even input pads (0, 1) per axis, where PyTorch's `padding=1` pads (1, 1) and shifts the grid.
* The transposed conv is the adjoint of that conv: input pixel i covers output rows 2i..2i+2 and
  the last row/column is cropped (PyTorch's `padding=1, output_padding=1` covers 2i-1..2i+1).
* Every conv and transposed conv has no bias and is followed by InstanceNorm (eps 1e-6, affine,
  biased variance), including the final 1-channel deconv before `tanh`.
* Weights are "xavier_init", which is really He-normal `N(0, sqrt(2/size[0]))`. For FC layers
  size[0] is fan-in; for conv filters `[kh, kw, in, out]` it is the kernel height, so EVERY conv
  filter gets std sqrt(2/3) = 0.816 whatever its channel count (most likely unintended). We keep
  it by default (`init="seed"`): InstanceNorm cancels the scale in the forward pass, but Adam's
  steps are the same size for any weight scale, so the scale sets the effective learning rate of
  the convs. `init="he"` gives the textbook sqrt(2/fan_in).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sketchlab.errors import ConfigError
from sketchlab.nn.init import normal_linear

INSTANCE_NORM_EPS = 1e-6  # tf.contrib.layers.instance_norm's default
CONV_INITS = ("seed", "he")


def same_pads(size: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) along one axis: output ceil(size/stride), odd pad after."""
    out = -(-size // stride)
    span = (kernel - 1) * dilation + 1
    total = max((out - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def init_conv_weight_(weight: Tensor, init: str = "seed") -> Tensor:
    """The seeds' conv init (std sqrt(2/kernel_height)) or He-normal over the real fan-in."""
    if init == "seed":
        return nn.init.normal_(weight, 0.0, math.sqrt(2.0 / weight.shape[-2]))
    if init == "he":
        return nn.init.kaiming_normal_(weight, nonlinearity="relu")
    raise ConfigError(f"conv init must be one of {CONV_INITS}, not {init!r}")


def seed_linear(in_features: int, out_features: int) -> nn.Linear:
    """FC layer with the seeds' init: W ~ N(0, sqrt(2/fan_in)), b = 0."""
    return normal_linear(in_features, out_features, math.sqrt(2.0 / in_features))


class SameConv2d(nn.Conv2d):
    """Bias-free Conv2d with TF 'SAME' padding for any input size, stride and dilation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1, init: str = "seed"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, dilation=dilation, bias=False)
        init_conv_weight_(self.weight, init)

    def forward(self, x: Tensor) -> Tensor:
        k, s, d = self.kernel_size[0], self.stride[0], self.dilation[0]
        top, bottom = same_pads(x.shape[-2], k, s, d)
        left, right = same_pads(x.shape[-1], k, s, d)
        if top == bottom and left == right:  # symmetric: let the conv pad (no copy)
            return F.conv2d(x, self.weight, None, self.stride, (top, left), self.dilation)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, None, self.stride, 0, self.dilation)


class SameConvTranspose2d(nn.ConvTranspose2d):
    """Bias-free transposed conv matching TF `conv2d_transpose(..., padding='SAME')`.

    Output size = input size * stride. It is the exact adjoint of `SameConv2d` with the same
    kernel/stride: a padding-0 transposed conv, cropped at the forward conv's 'before' padding.
    Weight layout is PyTorch's `(in, out, kh, kw)`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 2, init: str = "seed"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, bias=False)
        init_conv_weight_(self.weight, init)

    def forward(self, x: Tensor) -> Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        h, w = x.shape[-2] * s, x.shape[-1] * s
        top, _ = same_pads(h, k, s)
        left, _ = same_pads(w, k, s)
        y = F.conv_transpose2d(x, self.weight, None, self.stride, 0)
        return y[..., top : top + h, left : left + w]


class ConvNorm(nn.Sequential):
    """conv (or transposed conv) -> InstanceNorm(eps 1e-6, affine) -> activation ('relu', 'tanh' or None)."""

    def __init__(self, conv: nn.Module, channels: int, activation: str | None = "relu"):
        acts = {"relu": nn.ReLU(), "tanh": nn.Tanh(), None: nn.Identity()}
        super().__init__(conv, nn.InstanceNorm2d(channels, eps=INSTANCE_NORM_EPS, affine=True), acts[activation])


def conv_norm(cin: int, cout: int, stride: int = 1, dilation: int = 1, activation: str | None = "relu", init: str = "seed") -> ConvNorm:
    return ConvNorm(SameConv2d(cin, cout, 3, stride, dilation, init), cout, activation)


def deconv_norm(cin: int, cout: int, activation: str | None = "relu", init: str = "seed") -> ConvNorm:
    return ConvNorm(SameConvTranspose2d(cin, cout, 3, 2, init), cout, activation)


class DilatedBlock(nn.Module):
    """The seeds' dilated block (`model.py` `create_dilated_blocks`):

        a_r = IN(conv3x3 dilation r (u)) for r in (1, 2, 5)      # stride 1, SAME, linear
        out = relu(IN(conv3x3 stride s (relu(a_1 + a_2 + a_5))))
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2, dilations=(1, 2, 5), init: str = "seed"):
        super().__init__()
        self.branches = nn.ModuleList(conv_norm(in_channels, out_channels, 1, r, None, init) for r in dilations)
        self.down = conv_norm(out_channels, out_channels, stride, 1, "relu", init)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.relu(sum(branch(x) for branch in self.branches)))


def _as_nchw(img: Tensor) -> Tensor:
    if img.dim() == 3:
        return img.unsqueeze(1)
    if img.dim() == 4 and img.shape[1] == 1:
        return img
    raise ValueError(f"expected images (B, H, W) or (B, 1, H, W), got {tuple(img.shape)}")


class ImageEncoder(nn.Module):
    """RPCL-pix2seq's CNN q(z|x) (`model.py` `cnn_encoder`): 48x48 image in [-1, 1] -> (mu, sigma^2).

        layer_1  DilatedBlock(32, stride 2)   24x24x32
        layer_2  DilatedBlock(64, stride 2)   12x12x64
        conv0    conv3x3 s2, IN, ReLU          6x6x128
        conv1    conv3x3 s2, IN, ReLU          3x3x256  -> flatten in TF's (h, w, c) order: 2304
        fc_mu, fc_sigma2 (softplus + 1e-10: a variance, not a log-variance)
    """

    def __init__(self, z_size: int = 128, image_size: int = 48, channels=(32, 64, 128, 256), init: str = "seed"):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.layer_1 = DilatedBlock(1, c1, 2, init=init)
        self.layer_2 = DilatedBlock(c1, c2, 2, init=init)
        self.conv0 = conv_norm(c2, c3, 2, init=init)
        self.conv1 = conv_norm(c3, c4, 2, init=init)
        side = image_size
        for _ in range(4):
            side = -(-side // 2)  # SAME stride 2: ceil
        self.flat_size = side * side * c4
        self.fc_mu = seed_linear(self.flat_size, z_size)
        self.fc_sigma2 = seed_linear(self.flat_size, z_size)

    def features(self, img: Tensor) -> list[Tensor]:
        """Each stage's output (NCHW), for inspection and tests."""
        outs, x = [], _as_nchw(img)
        for stage in (self.layer_1, self.layer_2, self.conv0, self.conv1):
            x = stage(x)
            outs.append(x)
        return outs

    def forward(self, img: Tensor) -> tuple[Tensor, Tensor]:
        x = self.features(img)[-1]
        flat = x.permute(0, 2, 3, 1).flatten(1)  # NHWC order, so TF weights port unchanged
        return self.fc_mu(flat), F.softplus(self.fc_sigma2(flat)) + 1e-10


class ImageDecoder(nn.Module):
    """RPCL-pix2seq's deconv regulariser (`model.py` `cnn_decoder`): z -> 48x48 image in [-1, 1].

    FC z -> 3x3x256 + ReLU (no IN), then four SAME transposed convs (k3 s2), each followed by
    IN: 6x6x128 ReLU, 12x12x64 ReLU, 24x24x32 ReLU, 48x48x1 tanh (IN on the single channel too).
    """

    def __init__(self, z_size: int = 128, image_size: int = 48, channels=(256, 128, 64, 32), init: str = "seed"):
        super().__init__()
        if image_size % 16:
            raise ConfigError(f"the image decoder upsamples by 16; png_width {image_size} is not a multiple of 16")
        self.side = image_size // 16
        c0, c1, c2, c3 = channels
        self.c0 = c0
        self.fc = seed_linear(z_size, self.side * self.side * c0)
        self.deconv0 = deconv_norm(c0, c1, "relu", init)
        self.deconv1 = deconv_norm(c1, c2, "relu", init)
        self.deconv2 = deconv_norm(c2, c3, "relu", init)
        self.deconv3 = deconv_norm(c3, 1, "tanh", init)

    def features(self, z: Tensor) -> list[Tensor]:
        x = F.relu(self.fc(z)).view(-1, self.side, self.side, self.c0).permute(0, 3, 1, 2)
        outs = []
        for stage in (self.deconv0, self.deconv1, self.deconv2, self.deconv3):
            x = stage(x)
            outs.append(x)
        return outs

    def forward(self, z: Tensor) -> Tensor:
        return self.features(z)[-1].squeeze(1)
