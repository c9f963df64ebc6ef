"""The one normal-init Linear helper gives exactly the values of the three it replaced."""

import math

import pytest
import torch
from torch import nn

from sketchlab.nn.conv import seed_linear
from sketchlab.nn.init import normal_linear


def _old_gaussian_linear(n_in, n_out, std):  # sketch-rnn's former _gaussian_linear
    lin = nn.Linear(n_in, n_out)
    nn.init.normal_(lin.weight, 0.0, std)
    nn.init.zeros_(lin.bias)
    return lin


def _old_normal_linear(n_in, n_out, var):  # SP-gra2seq's former _normal_linear (variance, no bias)
    lin = nn.Linear(n_in, n_out, bias=False)
    nn.init.normal_(lin.weight, 0.0, math.sqrt(var))
    return lin


def _old_seed_linear(n_in, n_out):  # nn.conv's former seed_linear
    fc = nn.Linear(n_in, n_out)
    nn.init.normal_(fc.weight, 0.0, math.sqrt(2.0 / n_in))
    nn.init.zeros_(fc.bias)
    return fc


def _built(seed, make):
    torch.manual_seed(seed)
    first = make()
    after = torch.rand(3)  # the RNG state the next layer would see
    return first, after


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("case", ["gaussian", "normal_no_bias", "seed"])
def test_normal_linear_reproduces_the_former_helpers(seed, case):
    old, new = {
        "gaussian": (lambda: _old_gaussian_linear(33, 17, 0.001), lambda: normal_linear(33, 17, 0.001)),
        "normal_no_bias": (lambda: _old_normal_linear(33, 17, 2.0 / 33),
                           lambda: normal_linear(33, 17, math.sqrt(2.0 / 33), bias=False)),
        "seed": (lambda: _old_seed_linear(33, 17), lambda: seed_linear(33, 17)),
    }[case]
    (a, ra), (b, rb) = _built(seed, old), _built(seed, new)
    assert torch.equal(a.weight, b.weight) and torch.equal(ra, rb)
    assert (a.bias is None) == (b.bias is None)
    if a.bias is not None:
        assert torch.equal(a.bias, b.bias) and not b.bias.any()
