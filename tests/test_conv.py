"""TF-'SAME' conv pieces and RPCL-pix2seq's image encoder/decoder (spec section 3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from sketchlab.errors import ConfigError
from sketchlab.nn.conv import (
    DilatedBlock,
    ImageDecoder,
    ImageEncoder,
    SameConv2d,
    SameConvTranspose2d,
    conv_norm,
    same_pads,
)

# x[i, j] = 4i + j on a 4x4 grid
X44 = torch.arange(16.0).view(1, 1, 4, 4)


def conv_with(kernel, **kw):
    c = SameConv2d(1, 1, 3, **kw)
    with torch.no_grad():
        c.weight.copy_(torch.tensor(kernel, dtype=torch.float32).view(1, 1, 3, 3))
    return c


def test_same_pads_rules():
    assert same_pads(48, 3, 2) == (0, 1)  # even input, stride 2: odd pad at the bottom/right
    assert same_pads(3, 3, 2) == (1, 1)  # odd input: symmetric
    assert same_pads(24, 3, 1, 5) == (5, 5)  # stride 1, dilation r: pad r each side


def test_stride2_same_conv_by_hand():
    # TF SAME on 4x4, k3 s2: pad 0 before, 1 after. Output (r, c) sees rows 2r..2r+2 and
    # cols 2c..2c+2, where row/col 4 is the zero pad.
    # All-ones kernel:
    #   (0,0): rows 0-2, cols 0-2: sum 4i over 3x3 = 4*3*(0+1+2) = 36, sum j = 3*(0+1+2) = 9 -> 45
    #   (0,1): rows 0-2, cols 2-3: 4*2*3 + 3*(2+3) = 39
    #   (1,0): rows 2-3, cols 0-2: 4*3*(2+3) + 2*(0+1+2) = 66
    #   (1,1): rows 2-3, cols 2-3: 4*2*(2+3) + 2*(2+3) = 50
    out = conv_with([[1.0] * 3] * 3, stride=2)(X44)
    assert out.shape == (1, 1, 2, 2)
    assert out.flatten().tolist() == [45.0, 39.0, 66.0, 50.0]
    # kernel one-hot at the top-left tap -> out[r, c] = x[2r, 2c] = (0, 2, 8, 10)
    one = conv_with([[1.0, 0, 0], [0, 0, 0], [0, 0, 0]], stride=2)
    assert one(X44).flatten().tolist() == [0.0, 2.0, 8.0, 10.0]
    # PyTorch's padding=1 would see x[2r-1, 2c-1] instead: (pad, pad, pad, x[1,1] = 5)
    torch_pad1 = F.conv2d(X44, one.weight, stride=2, padding=1)
    assert torch_pad1.flatten().tolist() == [0.0, 0.0, 0.0, 5.0]


def test_dilated_same_conv_by_hand():
    # stride 1, dilation 2: pad 2 each side; top-left tap reads x[i-2, j-2] (0 outside)
    out = conv_with([[1.0, 0, 0], [0, 0, 0], [0, 0, 0]], dilation=2)(X44)[0, 0]
    expected = torch.zeros(4, 4)
    expected[2:, 2:] = X44[0, 0, :2, :2]
    assert torch.equal(out, expected)


def test_transposed_conv_by_hand():
    # y = [[1, 2], [3, 4]], all-ones 3x3 kernel, stride 2: y[i, j] covers rows 2i..2i+2 and
    # cols 2j..2j+2 of a 5x5 map, cropped to 4x4. Rows hit by i: r0 {0}, r1 {0}, r2 {0, 1}, r3 {1}.
    #   row 0: (1, 1, 1+2, 2)     row 2: (1+3, 1+3, 1+2+3+4, 2+4)
    #   row 1: (1, 1, 3, 2)       row 3: (3, 3, 3+4, 4)
    d = SameConvTranspose2d(1, 1, 3, 2)
    with torch.no_grad():
        d.weight.fill_(1.0)
    out = d(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))[0, 0]
    assert out.tolist() == [[1, 1, 3, 2], [1, 1, 3, 2], [4, 4, 10, 6], [3, 3, 7, 4]]


@pytest.mark.parametrize("size", [4, 6, 48])
def test_transposed_conv_is_adjoint_of_same_conv(size):
    # <conv(x), y> == <x, convT(y)> with the same weight tensor (out, in, kh, kw)
    g = torch.Generator().manual_seed(size)
    conv = SameConv2d(3, 5, 3, stride=2).double()
    convt = SameConvTranspose2d(5, 3, 3, 2).double()
    with torch.no_grad():
        convt.weight.copy_(conv.weight)
    x = torch.randn(2, 3, size, size, generator=g, dtype=torch.float64)
    y = torch.randn(2, 5, size // 2, size // 2, generator=g, dtype=torch.float64)
    lhs = (conv(x) * y).sum()
    rhs = (x * convt(y)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12)


def test_instance_norm_after_conv_eps_and_biased_variance():
    # one channel [[0, 2], [4, 6]] (identity kernel): mean 3, biased variance (9+1+1+9)/4 = 5
    # -> (x - 3)/sqrt(5 + 1e-6); gamma = 1, beta = 0 at init
    block = conv_norm(1, 1, activation=None)
    with torch.no_grad():
        block[0].weight.zero_()
        block[0].weight[0, 0, 1, 1] = 1.0
    x = torch.tensor([[[[0.0, 2.0], [4.0, 6.0]]]])
    expected = (x - 3.0) / math.sqrt(5.0 + 1e-6)
    assert torch.allclose(block(x), expected, atol=1e-6)
    assert block[1].eps == 1e-6 and block[1].affine and block[0].bias is None


def test_encoder_and_decoder_shapes_per_spec_tables():
    torch.manual_seed(0)
    enc, dec = ImageEncoder(), ImageDecoder()
    img = torch.rand(2, 48, 48) * 2 - 1
    shapes = [tuple(f.shape[1:]) for f in enc.features(img)]
    assert shapes == [(32, 24, 24), (64, 12, 12), (128, 6, 6), (256, 3, 3)]
    assert enc.flat_size == 2304 and enc.fc_mu.in_features == 2304
    mu, var = enc(img)
    assert mu.shape == var.shape == (2, 128)
    assert (var > 0).all()
    shapes = [tuple(f.shape[1:]) for f in dec.features(mu)]
    assert shapes == [(128, 6, 6), (64, 12, 12), (32, 24, 24), (1, 48, 48)]
    out = dec(mu)
    assert out.shape == (2, 48, 48) and out.abs().max() <= 1.0
    # IN on the single output channel before tanh (spec 3.3 [FAITHFUL])
    assert isinstance(dec.deconv3[1], torch.nn.InstanceNorm2d) and dec.deconv3[1].num_features == 1
    # no conv has a bias
    assert all(m.bias is None for m in enc.modules() if isinstance(m, torch.nn.Conv2d))
    assert all(m.bias is None for m in dec.modules() if isinstance(m, torch.nn.ConvTranspose2d))


def test_variance_head_floor():
    enc = ImageEncoder(z_size=4)
    with torch.no_grad():
        enc.fc_sigma2.weight.zero_()
        enc.fc_sigma2.bias.fill_(-1000.0)  # softplus(-1000) = 0 in float32 -> 1e-10
    _, var = enc(torch.zeros(1, 48, 48))
    assert torch.allclose(var, torch.full((1, 4), 1e-10))


def test_flatten_is_nhwc():
    # fc_mu sees the conv1 map in TF's (h, w, c) order: zero every weight but the one for
    # (h=0, w=1, c=2) -> flat index (0*3 + 1)*256 + 2 = 258
    enc = ImageEncoder(z_size=1)
    img = torch.rand(1, 48, 48)
    with torch.no_grad():
        enc.fc_mu.weight.zero_()
        enc.fc_mu.weight[0, 258] = 1.0
    mu, _ = enc(img)
    assert torch.allclose(mu[0, 0], enc.features(img)[-1][0, 2, 0, 1])


def test_seed_init_quirk_and_he_option():
    torch.manual_seed(0)
    w = SameConv2d(128, 256, 3, init="seed").weight
    assert abs(w.std().item() - math.sqrt(2 / 3)) < 0.01  # 0.816 regardless of channels
    w = SameConv2d(128, 256, 3, init="he").weight
    assert abs(w.std().item() - math.sqrt(2 / (128 * 9))) < 0.002
    enc = ImageEncoder()
    assert abs(enc.fc_mu.weight.std().item() - math.sqrt(2 / 2304)) < 0.001
    assert enc.fc_mu.bias.abs().max() == 0
    with pytest.raises(ConfigError):
        SameConv2d(1, 1, 3, init="xavier")
    with pytest.raises(ConfigError):
        ImageDecoder(image_size=40)


def test_dilated_block_sums_three_branches():
    torch.manual_seed(0)
    b = DilatedBlock(2, 3, stride=2)
    x = torch.randn(1, 2, 8, 8)
    a = sum(br(x) for br in b.branches)
    assert torch.allclose(b(x), b.down(F.relu(a)))
    assert [br[0].dilation for br in b.branches] == [(1, 1), (2, 2), (5, 5)]
    assert b(x).shape == (1, 3, 4, 4)
