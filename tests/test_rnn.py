"""sketch-rnn cells: hand-computed steps, an independent NumPy port of magenta's TF code, the
inits, and parity of every fast path with the per-step reference (values, final state and all
gradients) on CPU."""

import math

import numpy as np
import pytest
import torch

from sketchlab.errors import ConfigError
from sketchlab.nn.mixture import MixtureHead, sample_step
from sketchlab.nn.cells import HyperLSTMCell, LayerNormLSTMCell, LSTMCell, make_cell
from sketchlab.nn.rnn_pointwise import Fusion
from sketchlab.nn.sampler import BatchedSampler, sample_sequences

KINDS = ["lstm", "layer_norm", "hyper"]


def small_cell(kind, I=5, H=12, keep=0.9, dtype=torch.float32, seed=0, perturb=0.1, fusion=True):
    torch.manual_seed(seed)
    cell = make_cell(kind, I, H, recurrent_dropout_keep=keep, hyper_num_units=8, hyper_embedding_size=4, fusion=fusion).to(dtype)
    # Move every parameter off its special init value (zeros, ones, constants) so that each one
    # matters in the comparisons below.
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(perturb * torch.randn_like(p))
    return cell


# --------------------------------------------------------------------------------------------
# Hand-computed steps
# --------------------------------------------------------------------------------------------


def test_lstm_step_by_hand():
    cell = LSTMCell(1, 1)
    with torch.no_grad():
        cell.W_xh.copy_(torch.tensor([[0.5, -0.3, 0.8, 0.1]]))
        cell.W_hh.copy_(torch.tensor([[0.2, 0.4, -0.6, 0.3]]))
        cell.bias.copy_(torch.tensor([0.1, 0.0, -0.1, 0.05]))
    x, state = torch.tensor([[1.0]]), torch.tensor([[0.5, -0.2]])  # [c, h]
    # i = 0.5 - 0.04 + 0.1 = 0.56, j = -0.3 - 0.08 = -0.38, f = 0.8 + 0.12 - 0.1 = 0.82, o = 0.09
    # c' = 0.5 sigmoid(0.82 + 1) + sigmoid(0.56) tanh(-0.38)
    #    = 0.5 * 0.8605661270 + 0.6364525403 * -0.3627074676 = 0.1994369744
    # h' = tanh(0.1994369744) * sigmoid(0.09) = 0.1968362 * 0.5224848248 = 0.1028428660
    h, new = cell.step(x, state)
    assert new[0, 0].item() == pytest.approx(0.1994369744, abs=1e-7)
    assert h.item() == pytest.approx(0.1028428660, abs=1e-7)
    assert new[0, 1].item() == h.item()  # state layout [c, h]
    # Recurrent dropout removes only the candidate: c' = c sigmoid(f + 1) = 0.4302830635.
    _, new = cell.step(x, state, dropout_mask=torch.zeros(1, 1))
    assert new[0, 0].item() == pytest.approx(0.4302830635, abs=1e-7)


def test_layer_norm_lstm_step_by_hand():
    cell = LayerNormLSTMCell(1, 2)
    with torch.no_grad():
        cell.W_xh.copy_(torch.tensor([[1.0, -1.0, 0.5, 0.3, 2.0, 0.0, 0.0, 0.0]]))  # gates i, j, f, o
        cell.W_hh.zero_()
    x, state = torch.tensor([[1.0]]), torch.tensor([[0.0, 0.0, 0.5, -0.5]])  # [h, c]
    # LayerNorm of a pair (m + d, m - d) is +-d / sqrt(d^2 + 1e-3):
    #   i: d = 1   -> +-0.9995003747;  j: d = 0.1 -> +-0.9534625892;  f: as i;  o: d = 0 -> 0.
    # c1 =  0.5 sigmoid(1.9995003747) + sigmoid(0.9995003747) tanh(0.9534625892) = 0.9822672840
    # c2 = -0.5 sigmoid(0.0004996253) + sigmoid(-0.9995003747) tanh(-0.9534625892) = -0.4495141013
    # LN(c') = +-0.9990258147, h' = tanh(+-0.9990258147) * sigmoid(0) = +-0.3805923597
    h, new = cell.step(x, state)
    assert new[0, 2:].tolist() == pytest.approx([0.9822672840, -0.4495141013], abs=1e-6)
    assert h[0].tolist() == pytest.approx([0.3805923597, -0.3805923597], abs=1e-6)
    assert torch.equal(new[:, :2], h)  # state layout [h, c]


# --------------------------------------------------------------------------------------------
# An independent NumPy port of magenta sketch_rnn/rnn.py (float64)
# --------------------------------------------------------------------------------------------


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def _np_layer_norm_all(h, gamma, beta, eps=1e-3):
    b, n4 = h.shape
    hr = h.reshape(b, 4, n4 // 4)
    mean = hr.mean(2, keepdims=True)
    var = ((hr - mean) ** 2).mean(2, keepdims=True)
    return gamma * ((hr - mean) / np.sqrt(var + eps)).reshape(b, n4) + beta


def _np_layer_norm(x, gamma, beta, eps=1e-3):
    xs = x - x.mean(1, keepdims=True)
    return gamma * xs / np.sqrt((xs**2).mean(1, keepdims=True) + eps) + beta


def np_lstm(P, x, state, mask):
    c, h = np.split(state, 2, 1)
    i, j, f, o = np.split(np.concatenate([x, h], 1) @ np.concatenate([P["W_xh"], P["W_hh"]], 0) + P["bias"], 4, 1)
    new_c = c * _sig(f + 1.0) + _sig(i) * np.tanh(j) * mask
    new_h = np.tanh(new_c) * _sig(o)
    return new_h, np.concatenate([new_c, new_h], 1)


def np_ln_lstm(P, x, state, mask, prefix=""):
    h, c = np.split(state, 2, 1)
    concat = np.concatenate([x, h], 1) @ np.concatenate([P[prefix + "W_xh"], P[prefix + "W_hh"]], 0)
    concat = _np_layer_norm_all(concat, P[prefix + "ln_gamma"], P[prefix + "ln_beta"])
    i, j, f, o = np.split(concat, 4, 1)
    new_c = c * _sig(f + 1.0) + _sig(i) * np.tanh(j) * mask
    new_h = np.tanh(_np_layer_norm(new_c, P[prefix + "ln_c_gamma"], P[prefix + "ln_c_beta"])) * _sig(o)
    return new_h, np.concatenate([new_h, new_c], 1)


def np_hyper(P, x, state, mask, H, Hy):
    total_h, total_c = np.split(state, 2, 1)
    h, c = total_h[:, :H], total_c[:, :H]
    hyper_state = np.concatenate([total_h[:, H:], total_c[:, H:]], 1)
    hyper_out, hyper_new = np_ln_lstm(P, np.concatenate([x, h], 1), hyper_state, 1.0, prefix="hyper_cell.")

    def hyper_norm(layer, k, use_bias):
        zw = hyper_out @ P["hyper_zw_w"][k] + P["hyper_zw_b"][k]
        result = (zw @ P["hyper_alpha_w"][k]) * layer
        if use_bias:
            result = result + (hyper_out @ P["hyper_zb_w"][k - 4]) @ P["hyper_beta_w"][k - 4]
        return result

    xs = np.split(x @ P["W_xh"], 4, 1)
    hs = np.split(h @ P["W_hh"], 4, 1)
    bs = np.split(P["bias"], 4)
    gates = [hyper_norm(xs[g], g, False) + hyper_norm(hs[g], 4 + g, True) + bs[g] for g in range(4)]
    i, j, f, o = np.split(_np_layer_norm_all(np.concatenate(gates, 1), P["ln_gamma"], P["ln_beta"]), 4, 1)
    new_c = c * _sig(f + 1.0) + _sig(i) * np.tanh(j) * mask
    new_h = np.tanh(_np_layer_norm(new_c, P["ln_c_gamma"], P["ln_c_beta"])) * _sig(o)
    hyper_h, hyper_c = np.split(hyper_new, 2, 1)
    return new_h, np.concatenate([new_h, hyper_h, new_c, hyper_c], 1)


@pytest.mark.parametrize("kind", KINDS)
def test_step_matches_numpy_port_of_magenta(kind):
    cell = small_cell(kind, dtype=torch.float64)
    P = {k: v.detach().numpy() for k, v in cell.named_parameters()}
    rng = np.random.default_rng(0)
    x, state = rng.normal(size=(3, 5)), rng.normal(size=(3, cell.state_size)) * 0.5
    mask = (rng.random((3, 12)) < 0.9) / 0.9
    if kind == "lstm":
        ref = np_lstm(P, x, state, mask)
    elif kind == "layer_norm":
        ref = np_ln_lstm(P, x, state, mask)
    else:
        ref = np_hyper(P, x, state, mask, 12, 8)
    h, new = cell.step(torch.from_numpy(x), torch.from_numpy(state), torch.from_numpy(mask))
    np.testing.assert_allclose(h.detach().numpy(), ref[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(new.detach().numpy(), ref[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(cell.output(new).detach().numpy(), h.detach().numpy())


def test_hyper_at_init_is_layer_norm_lstm_with_weights_times_0_1():
    # At init alpha = (0 * h_hyp + 1) . (0.1 / 32) summed over 32 = 0.1 and beta = 0, so the main
    # cell is a LayerNorm-LSTM with 0.1 * W (bias 0), and the hyper part is the hyper cell's step.
    torch.manual_seed(0)
    hyper = HyperLSTMCell(6, 10, hyper_num_units=7, hyper_embedding_size=32)
    ln = LayerNormLSTMCell(6, 10)
    with torch.no_grad():
        ln.W_xh.copy_(0.1 * hyper.W_xh)
        ln.W_hh.copy_(0.1 * hyper.W_hh)
    x, state = torch.randn(4, 6), torch.randn(4, hyper.state_size)
    h, new = hyper.step(x, state)
    hh, yh, c, yc = hyper.split_state(state)
    h_ref, st_ref = ln.step(x, torch.cat([hh, c], 1))
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(torch.cat([new[:, :10], new[:, 17:27]], 1), st_ref)
    _, hyp_ref = hyper.hyper_cell.step(torch.cat([x, hh], 1), torch.cat([yh, yc], 1))
    torch.testing.assert_close(torch.cat([new[:, 10:17], new[:, 27:]], 1), hyp_ref)


# --------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_init(kind):
    torch.manual_seed(0)
    I, H = 133, 64
    cell = make_cell(kind, I, H, hyper_num_units=32, hyper_embedding_size=16)
    bound = math.sqrt(6 / (I + 4 * H))
    assert cell.W_xh.abs().max() <= bound and cell.W_xh.abs().max() > 0.95 * bound  # glorot uniform
    for k in range(4):  # four independent orthogonal blocks
        blk = cell.W_hh[:, k * H : (k + 1) * H]
        torch.testing.assert_close(blk.T @ blk, torch.eye(H), atol=1e-5, rtol=0)
    assert not torch.allclose(cell.W_hh[:, :H], cell.W_hh[:, H : 2 * H])
    if kind != "layer_norm":
        assert torch.equal(cell.bias, torch.zeros(4 * H))
    if kind != "lstm":
        assert torch.equal(cell.ln_gamma, torch.ones(4 * H)) and torch.equal(cell.ln_beta, torch.zeros(4 * H))
        assert torch.equal(cell.ln_c_gamma, torch.ones(H)) and torch.equal(cell.ln_c_beta, torch.zeros(H))
    if kind == "hyper":
        assert cell.state_size == 2 * (H + 32)
        assert cell.hyper_cell.W_xh.shape == (I + H, 4 * 32) and cell.hyper_cell.W_hh.shape == (32, 128)
        assert torch.equal(cell.hyper_zw_w, torch.zeros(8, 32, 16))
        assert torch.equal(cell.hyper_zw_b, torch.ones(8, 16))
        assert torch.equal(cell.hyper_alpha_w, torch.full((8, 16, H), 0.1 / 16))
        assert torch.equal(cell.hyper_beta_w, torch.zeros(4, 16, H))
        assert cell.hyper_zb_w.std().item() == pytest.approx(0.01, rel=0.05)  # stddev 0.01 (magenta)
    else:
        assert cell.state_size == 2 * H


def test_make_cell_rejects_unknown_kind_and_bad_shapes():
    with pytest.raises(ConfigError):
        make_cell("gru", 5, 8)
    with pytest.raises(ConfigError):
        make_cell("lstm", 5, 8, recurrent_dropout_keep=0.0)
    cell = make_cell("lstm", 5, 8)
    with pytest.raises(ValueError):
        cell.sequence(torch.zeros(2, 3, 4), torch.zeros(2, 16))
    with pytest.raises(ValueError):
        cell.sequence(torch.zeros(2, 3, 5), torch.zeros(2, 15))
    cell.train()
    cell.recurrent_dropout_keep = 0.9
    with pytest.raises(ConfigError):
        cell.sequence(torch.zeros(2, 3, 5), torch.zeros(2, 16), fast="cudnn")


# --------------------------------------------------------------------------------------------
# Fast paths against the reference
# --------------------------------------------------------------------------------------------


def run_and_grads(cell, x, s0, path, seed=5, autocast=False):
    """Outputs, final state and gradients of x, s0 and every parameter for one path."""
    for q in [x, s0, *cell.parameters()]:
        q.grad = None
    torch.manual_seed(seed)  # same dropout masks for every path
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        hs, st = cell.sequence(x, s0, fast=path)
    w = torch.linspace(-1, 1, hs.numel(), dtype=x.dtype, device=x.device).view_as(hs)
    loss = (hs.to(x.dtype) * w).sum() + (st.to(x.dtype) ** 2).sum()
    loss.backward()
    names = ["h", "final_state", "d_x", "d_state0"] + [f"d_{n}" for n, _ in cell.named_parameters()]
    values = [hs.detach(), st.detach(), x.grad.clone(), s0.grad.clone()] + [p.grad.clone() for p in cell.parameters()]
    return dict(zip(names, values))


def max_rel_err(a, b):
    """max |a - b| / max |a| per tensor, the worst over all tensors."""
    return max(((a[k].double() - b[k].double()).abs().max() / a[k].double().abs().max().clamp_min(1e-30)).item() for k in a)


def inputs(cell, B=3, T=7, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, cell.input_size, generator=g, dtype=dtype).requires_grad_()
    s0 = (0.5 * torch.randn(B, cell.state_size, generator=g, dtype=dtype)).requires_grad_()
    return x, s0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("training", [True, False])
def test_bptt_matches_reference_float64(kind, training):
    cell = small_cell(kind, dtype=torch.float64).train(training)
    x, s0 = inputs(cell, dtype=torch.float64)
    ref = run_and_grads(cell, x, s0, "reference")
    fast = run_and_grads(cell, x, s0, "bptt")
    assert max_rel_err(ref, fast) < 1e-12
    # Dropout really is on in training (and off in eval): a different seed changes the result.
    other = run_and_grads(cell, x, s0, "bptt", seed=6)
    assert (max_rel_err(ref, other) > 1e-3) == training


@pytest.mark.parametrize("kind", KINDS)
def test_bptt_matches_reference_float32(kind):
    cell = small_cell(kind, H=32).train()
    x, s0 = inputs(cell, B=4, T=12)
    ref = run_and_grads(cell, x, s0, "reference")
    fast = run_and_grads(cell, x, s0, "bptt")
    assert max_rel_err(ref, fast) < 2e-5


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_cudnn_path_matches_reference(dtype, tol):
    # On CPU torch.lstm runs PyTorch's native kernel with the same weight mapping as cuDNN.
    cell = small_cell("lstm", H=16, dtype=dtype).eval()
    x, s0 = inputs(cell, dtype=dtype)
    assert cell.resolve_path(None, x) == "cudnn"
    ref = run_and_grads(cell, x, s0, "reference")
    fast = run_and_grads(cell, x, s0, "cudnn")
    assert max_rel_err(ref, fast) < tol


def test_auto_path_choice():
    cell = make_cell("lstm", 5, 8, recurrent_dropout_keep=0.9)
    x = torch.zeros(1, 2, 5)
    assert cell.train().resolve_path(None, x) == "bptt"  # candidate dropout: cuDNN can't
    assert cell.eval().resolve_path(None, x) == "cudnn"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cell.resolve_path(None, x) == "bptt"
    assert cell.resolve_path(False, x) == "reference"
    assert make_cell("hyper", 5, 8, hyper_num_units=4, hyper_embedding_size=2).eval().resolve_path(None, x) == "bptt"


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_path_is_close_to_fp32_reference(kind):
    cell = small_cell(kind, H=32).train()
    x, s0 = inputs(cell, B=4, T=10)
    ref = run_and_grads(cell, x, s0, "reference")
    low = run_and_grads(cell, x, s0, "bptt", autocast=True)
    # Relative to each tensor's norm: bf16 GEMMs (8-bit mantissa) with fp32 state and pointwise.
    worst = max(((ref[k] - low[k].float()).norm() / ref[k].norm()).item() for k in ref)
    assert worst < 3e-2


@pytest.mark.parametrize("kind", KINDS)
def test_no_grad_forward_matches_training_forward(kind):
    cell = small_cell(kind).eval()
    x, s0 = inputs(cell)
    hs, st = cell.sequence(x, s0)
    with torch.no_grad():
        hs2, st2 = cell.sequence(x, s0)
        hs3, st3 = cell.sequence(x, s0, fast=False)
    torch.testing.assert_close(hs2, hs.detach())
    torch.testing.assert_close(st2, st.detach())
    torch.testing.assert_close(hs3, hs2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(st3, st2, rtol=1e-5, atol=1e-6)


def test_dropout_masks():
    cell = make_cell("layer_norm", 3, 50, recurrent_dropout_keep=0.75).train()
    m = cell.draw_dropout_masks(40, 30, "cpu")
    vals = torch.unique(m)
    assert len(vals) == 2 and vals[0] == 0 and vals[1].item() == pytest.approx(1 / 0.75)
    assert m.mean().item() == pytest.approx(1.0, abs=0.03)
    assert cell.eval().draw_dropout_masks(4, 3, "cpu") is None
    assert make_cell("lstm", 3, 5).train().draw_dropout_masks(4, 3, "cpu") is None


# --------------------------------------------------------------------------------------------
# Batched sampling
# --------------------------------------------------------------------------------------------


def _decoder(kind="lstm", H=16, Z=3, seed=0):
    torch.manual_seed(seed)
    cell = make_cell(kind, 5 + Z, H, recurrent_dropout_keep=0.9, hyper_num_units=8, hyper_embedding_size=4)
    head = MixtureHead(H, n_components=4)
    return cell, head


def one_at_a_time_greedy(cell, head, state0, z, n_steps):
    out = []
    for b in range(state0.shape[0]):
        state, prev, rows = state0[b : b + 1], torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]]), []
        for _ in range(n_steps):
            h, state = cell.step(torch.cat([prev, z[b : b + 1]], 1), state)
            prev = sample_step(head(h), greedy=True)
            rows.append(prev)
        out.append(torch.cat(rows))
    return torch.stack(out)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_greedy_sampling_equals_one_at_a_time(kind):
    cell, head = _decoder(kind)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, generator=g)
    state0 = torch.tanh(torch.randn(4, cell.state_size, generator=g))
    with torch.no_grad():
        ref = one_at_a_time_greedy(cell.eval(), head, state0, z, 15)
    cell.train()  # the sampler switches dropout off by itself and restores the mode
    out = sample_sequences(cell, head, state0, 15, z=z, greedy=True)
    assert cell.training
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_batched_sampling_is_reproducible_and_well_formed():
    cell, head = _decoder()
    state0 = torch.zeros(6, cell.state_size)
    z = torch.randn(6, 3)
    sampler = BatchedSampler(cell, head, 20)
    a = sampler(state0, z, 0.5, torch.Generator().manual_seed(1))
    b = sampler(state0, z, 0.5, torch.Generator().manual_seed(1))
    c = sampler(state0, z, 0.5, torch.Generator().manual_seed(2))
    assert a.shape == (6, 20, 5) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[..., 2:].sum(-1), torch.ones(6, 20))
    assert sampler.graph is None  # CPU: eager loop


def test_sample_sequences_reuses_one_sampler_per_decoder_and_shape():
    import copy

    cell, head = _decoder()
    state0, z = torch.zeros(6, cell.state_size), torch.randn(6, 3)

    def sample(n=10, B=6, **kw):
        return sample_sequences(cell, head, state0[:B], n, z=z[:B], temperature=0.5, generator=torch.Generator().manual_seed(1), **kw)

    a = sample()
    cache = cell._sampler_cache
    (sampler,) = cache.values()
    assert torch.equal(sample(), a) and list(cache.values()) == [sampler]  # reused
    assert torch.equal(a, BatchedSampler(cell, head, 10)(state0, z, 0.5, torch.Generator().manual_seed(1)))
    sample(B=4), sample(n=12), sample(greedy=True)  # another batch, length, mode: another sampler each
    assert len(cache) == 4 and list(cache.values())[0] is sampler
    # In-place weight updates (an optimizer step, load_state_dict) reach the cached sampler.
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(1.5)
    b = sample()
    assert cache[next(reversed(cache))] is sampler and not torch.equal(a, b)
    assert torch.equal(b, BatchedSampler(cell, head, 10)(state0, z, 0.5, torch.Generator().manual_seed(1)))
    # Parameters replaced by new tensors (a cast) give a new sampler; the cache stays bounded.
    cell.double(), head.double()
    sample_sequences(cell, head, state0.double(), 10, z=z.double())
    assert len(cache) == 4 and list(cache.values())[-1] is not sampler  # oldest entry evicted
    assert len(copy.deepcopy(cell)._sampler_cache) == 0  # copies never share captured graphs


def test_continuing_a_prefix_equals_the_reference_step_loop():
    # Prime the state with a prefix through the fast teacher-forced path, continue with
    # first_input = the prefix's last row; the reference runs `step` over everything.
    from sketchlab.nn.mixture import draw_noise

    B, K, n = 3, 6, 12
    for kind in KINDS:
        cell, head = _decoder(kind)
        cell.eval()
        g = torch.Generator().manual_seed(0)
        z = torch.randn(B, 3, generator=g)
        state0 = torch.tanh(torch.randn(B, cell.state_size, generator=g))
        prefix = torch.zeros(B, K, 5)
        prefix[..., :2] = torch.randn(B, K, 2, generator=g)
        prefix[..., 2] = 1.0
        prefix[:, 2, 2:] = torch.tensor([0.0, 1.0, 0.0])  # a pen lift inside the prefix
        s0 = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]]).expand(B, 5)
        for greedy in (True, False):
            noise = draw_noise((n, B), "cpu", torch.Generator().manual_seed(7), torch.float32)
            with torch.no_grad():
                state, prev, rows = state0, s0, []
                for k in range(K):
                    _, state = cell.step(torch.cat([prev, z], 1), state)
                    prev = prefix[:, k]
                for t in range(n):
                    h, state = cell.step(torch.cat([prev, z], 1), state)
                    prev = sample_step(head(h), 0.5, greedy=greedy, noise=noise[t])
                    rows.append(prev)
                ref = torch.stack(rows, 1)
                x = torch.cat([torch.cat([s0[:, None], prefix[:, :-1]], 1), z[:, None].expand(B, K, 3)], -1)
                _, primed = cell.sequence(x, state0)
            out = sample_sequences(cell, head, primed, n, z=z, temperature=0.5, greedy=greedy,
                                   generator=torch.Generator().manual_seed(7), first_input=prefix[:, -1])
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        # Without first_input the rollout starts from S_0 again (a different continuation).
        assert not torch.allclose(sample_sequences(cell, head, primed, n, z=z, greedy=True), ref)
    with pytest.raises(ValueError, match="first_input"):
        sample_sequences(cell, head, primed, n, z=z, first_input=prefix[:2, -1])


@pytest.mark.slow
def test_pointwise_functions_trace_as_one_graph():
    # On CUDA the per-step pointwise functions are compiled with torch.compile(fullgraph=True).
    # Trace them on CPU with the aot_eager backend (no compiler needed): any graph break or
    # tracing error would show up in the cell's fusion.error and the results must still match.
    import torch._dynamo

    limit = torch._dynamo.config.recompile_limit
    for kind in KINDS:
        fusion = Fusion(backend="aot_eager", devices=("cpu",))
        cell = small_cell(kind, H=8, fusion=fusion).train()
        assert cell.fusion is fusion and (kind != "hyper" or cell.hyper_cell.fusion is fusion)
        x, s0 = inputs(cell, B=2, T=3)
        ref = run_and_grads(cell, x, s0, "reference")
        fast = run_and_grads(cell, x, s0, "bptt")
        assert fusion.error is None and fusion.enabled
        assert fusion._compiled_for  # the compiled functions really ran
        assert max_rel_err(ref, fast) < 2e-5
    # The higher recompile limit was scoped to the compilations, not left set for the process.
    assert torch._dynamo.config.recompile_limit == limit


@pytest.mark.slow
def test_inductor_cpu_fusion_matches_reference():
    # The opt-in CPU fusion (Fusion(devices=("cuda", "cpu"))): inductor's generated C++ for the
    # LSTM step, forward and hand-written backward, against the per-step reference.
    fusion = Fusion(devices=("cuda", "cpu"))
    cell = small_cell("lstm", H=16, fusion=fusion).train()
    x, s0 = inputs(cell, B=4, T=6)
    ref = run_and_grads(cell, x, s0, "reference")
    fast = run_and_grads(cell, x, s0, "bptt")
    assert fusion.error is None and fusion.enabled and fusion._compiled_for
    assert max_rel_err(ref, fast) < 2e-5


@pytest.mark.slow
def test_a_failing_compile_turns_fusion_off_for_that_cell_only():
    fusion = Fusion(backend="no_such_backend", devices=("cpu",))
    cell = small_cell("layer_norm", fusion=fusion).eval()
    other = small_cell("layer_norm").eval()  # default policy: eager on CPU, untouched
    x, s0 = inputs(cell)
    with pytest.warns(UserWarning, match="fusion disabled"):
        hs, st = cell.sequence(x.detach(), s0.detach(), fast="bptt")
    assert not fusion.enabled and "no_such_backend" in fusion.error
    ref_h, ref_st = cell.sequence(x.detach(), s0.detach(), fast=False)
    torch.testing.assert_close(hs, ref_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(st, ref_st, rtol=1e-5, atol=1e-6)
    assert other.fusion.enabled and other.fusion.error is None


# --------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU): compiled pointwise functions, whole-step graphs, graphed sampling
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_fast_path_matches_reference(kind):
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        cell = small_cell(kind, H=64).cuda().train()
        x, s0 = inputs(cell, B=8, T=16)
        x, s0 = x.detach().cuda().requires_grad_(), s0.detach().cuda().requires_grad_()
        ref = run_and_grads(cell, x, s0, "reference")
        fast = run_and_grads(cell, x, s0, "bptt")
        assert cell.fusion.error is None and cell.fusion._compiled_for
        assert max_rel_err(ref, fast) < 1e-4
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


@pytest.mark.gpu
def test_cuda_graphed_training_step_equals_eager():
    from sketchlab.nn.cudagraph import GraphedStep
    from sketchlab.nn.mixture import mixture_nll

    cell = small_cell("hyper", H=64, keep=1.0).cuda().train()
    head = MixtureHead(64).cuda()
    params = list(cell.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3, fused=True, capturable=True)
    x = torch.randn(8, 16, cell.input_size, device="cuda")
    s0 = torch.zeros(8, cell.state_size, device="cuda")
    target = torch.zeros(8, 16, 5, device="cuda")
    target[..., 2] = 1

    def step(x, s0, target):
        opt.zero_grad(set_to_none=False)
        hs, _ = cell.sequence(x, s0)
        loss = mixture_nll(head(hs), target, training=True)
        loss.backward()
        opt.step()
        return loss.detach()

    graphed = GraphedStep(step, (x, s0, target))
    saved = [p.detach().clone() for p in params], [{k: v.clone() for k, v in st.items()} for st in opt.state.values()]
    lg = [graphed(x, s0, target).item() for _ in range(2)]
    pg = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, s in zip(params, saved[0]):
            p.copy_(s)
        for st, sv in zip(opt.state.values(), saved[1]):
            for k, v in sv.items():
                st[k].copy_(v)
    le = [step(x, s0, target).item() for _ in range(2)]
    assert lg == pytest.approx(le, rel=1e-5)
    for a, b in zip(pg, params):
        torch.testing.assert_close(a, b.detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
def test_cuda_graphed_sampling_equals_eager():
    cell, head = _decoder("lstm")
    cell, head = cell.cuda(), head.cuda()
    state0 = torch.zeros(32, cell.state_size, device="cuda")
    z = torch.randn(32, 3, device="cuda")
    graphed = BatchedSampler(cell, head, 30, use_graph=True)
    a = graphed(state0, z, 0.5, torch.Generator("cuda").manual_seed(1))
    assert graphed.graph is not None, graphed.graph_error
    b = BatchedSampler(cell, head, 30, use_graph=False)(state0, z, 0.5, torch.Generator("cuda").manual_seed(1))
    torch.testing.assert_close(a, b)
