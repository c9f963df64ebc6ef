"""The RPCL-pix2seq GMM prior and the RPCL-pix2seqH hierarchy against hand-computed cases.

Every expected number below is worked out in the comment next to it (spec sections 4 and 5 of
docs/specs/rpcl-pix2seq.md); none is produced by calling the code under test.
"""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from sketchlab.errors import ConfigError
from sketchlab.nn.gmm_prior import GMMPrior, GMMState, alpha_kl, gmm_log_likelihood, gmm_posterior, gmm_update
from sketchlab.nn.hierarchy_prior import (
    HierarchicalPrior,
    HierarchyState,
    diag_heavy_q,
    hierarchy_log_prob,
    hierarchy_update,
    merge_target,
    structural_kl,
)
from sketchlab.nn.rpcl import gaussian_kl, kl_weight, rpcl_signs, winner_and_rival

E2 = math.exp(-2.0)


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def close(a, b, rel=1e-5, abs=1e-7):
    assert torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), rtol=rel, atol=abs), (a, b)


# --------------------------------------------------------------------------------------------
# pix2seq: E-step
# --------------------------------------------------------------------------------------------


def test_log_likelihood_uses_seed_constant():
    # D = 1, z = 0, m = 0, v = 1: l = -0 - log sqrt(1) - 1/2 log(2 * 3.1416) = -0.9189397
    # (the true 1/2 log(2 pi) is 0.9189385; the seed's 3.1416 differs in the 6th digit)
    ll = gmm_log_likelihood(t([[0.0]]), t([[0.0]]), t([[1.0]]))
    close(ll, [[-0.918939702]], rel=1e-7)
    # D = 2, z = (1, 0), m = (0, 0), v = (4, 1): -1/2 (1/4) - log 2 - 2 * 0.9189397 = -2.6260263
    ll = gmm_log_likelihood(t([[1.0, 0.0]]), t([[0.0, 0.0]]), t([[4.0, 1.0]]))
    close(ll, [[-0.125 - math.log(2.0) - 2 * 0.918939702]], rel=1e-6)


@pytest.mark.parametrize("faithful", [True, False])
def test_posterior_hand_case(faithful):
    # K = 2, D = 1, m = (0, 2), v = (1, 1), alpha = (1/2, 1/2).
    # z = 0: l = (c, c - 2) -> gamma = (1, e^-2)/(1 + e^-2) = (0.8807971, 0.1192029)
    # z = 1: equal likelihoods -> (1/2, 1/2)
    state = GMMState(t([[0.0], [2.0]]), t([[1.0], [1.0]]), t([0.5, 0.5]))
    g = gmm_posterior(t([[0.0], [1.0]]), state, faithful)
    close(g, [[1 / (1 + E2), E2 / (1 + E2)], [0.5, 0.5]])
    # alpha = (1/4, 3/4), z = 1: gamma = alpha
    g = gmm_posterior(t([[1.0]]), state._replace(alpha=t([0.25, 0.75])), faithful)
    close(g, [[0.25, 0.75]])
    # z = -5: l = (-12.5, -24.5) + c; the loser's ratio e^-12 = 6.1e-6 is clipped UP to 1e-5:
    # r = (1/(1+e^-12), 1e-5) = (0.99999386, 1e-5) -> gamma_1 = 1e-5/1.00000386 = 9.99996e-6
    g = gmm_posterior(t([[-5.0]]), state, faithful)
    close(g[0, 1], 9.99996144e-6, rel=1e-5)


def test_posterior_underflow_faithful_uniform_logspace_one_hot():
    # m = (0, 1), v = 1, z = 40: l = (-800, -760.5) - 0.919, both below -745 so exp() is 0.0 in
    # float64. Seed: r = 0/(1e-300) = 0 -> clip to 1e-5 -> gamma = (1/2, 1/2).
    # log-space: softmax of (-800, -760.5) = (e^-39.5, 1) -> (1e-5 after the floor, 1)
    #            -> gamma = (1e-5, 1)/(1 + 1e-5) = (9.9999e-6, 0.99999)
    state = GMMState(t([[0.0], [1.0]]), t([[1.0], [1.0]]), t([0.5, 0.5]))
    z = t([[40.0]])
    close(gmm_posterior(z, state, faithful=True), [[0.5, 0.5]])
    close(gmm_posterior(z, state, faithful=False), [[1e-5 / (1 + 1e-5), 1 / (1 + 1e-5)]], rel=1e-5)


def test_posterior_paths_agree_without_underflow():
    g = torch.Generator().manual_seed(0)
    state = GMMState(torch.randn(5, 8, generator=g), torch.rand(5, 8, generator=g) + 0.5, torch.softmax(torch.randn(5, generator=g), 0))
    z = torch.randn(16, 8, generator=g)
    close(gmm_posterior(z, state, True), gmm_posterior(z, state, False), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("faithful", [True, False])
def test_posterior_survives_dead_components(faithful):
    # alpha = 0 (clipped by an RPCL step) and a variance at the 1e-10 clip: finite, normalised,
    # the dead components sit at the 1e-5 floor, and gradients are finite.
    state = GMMState(t([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]), t([[1.0, 1.0], [1e-10, 1e-10], [1.0, 1.0]]), t([0.0, 0.5, 0.5]))
    z = torch.randn(4, 2, requires_grad=True)
    g = gmm_posterior(z, state, faithful)
    assert torch.isfinite(g).all()
    close(g.sum(-1), torch.ones(4), rel=1e-6)
    close(g[:, 0], torch.full((4,), 1e-5), rel=1e-4)  # alpha_0 = 0 -> floor
    g[:, 2].sum().backward()
    assert torch.isfinite(z.grad).all()


# --------------------------------------------------------------------------------------------
# pix2seq: batch updates (spec 4.3)
# --------------------------------------------------------------------------------------------


def test_em_update_hand_case():
    # K = 2, D = 1, B = 3. mu = (0, 2, 4), s2 = (0.5, 0.5, 1), w = [[1, 0], [.5, .5], [0, 1]].
    # Old m = (0, 2), v = (1, 1), alpha = (0.2, 0.8).
    # N = (1.5, 1.5); m~0 = (0 + 1)/1.5 = 2/3;  m~1 = (1 + 4)/1.5 = 10/3
    # v~0 = [((0-2/3)^2 + .5) + .5((2-2/3)^2 + .5)]/1.5 = (4/3 + 3/4)/1.5 = 25/18   (batch mean!)
    # v~1 = [.5((2-10/3)^2 + .5) + ((4-10/3)^2 + 1)]/1.5 = (4/3 + 5/4)/1.5 = 31/18
    # alpha~ = (1/2, 1/2)
    # m' = .95 m + .05 m~ = (1/30, 1.9 + 1/6);  v' = .95 + .05 v~ = (1.0194444, 1.0361111)
    # alpha' = .95 (0.2, 0.8) + .05 (.5, .5) = (0.215, 0.785), sums to 1.
    w = t([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    old = GMMState(t([[0.0], [2.0]]), t([[1.0], [1.0]]), t([0.2, 0.8]))
    new = gmm_update(w, t([[0.0], [2.0], [4.0]]), t([[0.5], [0.5], [1.0]]), old)
    close(new.mean, [[1 / 30], [1.9 + 1 / 6]])
    close(new.var, [[0.95 + 0.05 * 25 / 18], [0.95 + 0.05 * 31 / 18]])
    close(new.alpha, [0.215, 0.785])


def test_rpcl_weights_winner_rival_ties():
    # rows: win 0 riv 1 | win 0 riv 2 | win 2 riv 1 | tie -> win 0, riv 1 (lowest index)
    g = t([[0.7, 0.2, 0.1], [0.6, 0.1, 0.3], [0.1, 0.3, 0.6], [0.4, 0.4, 0.2]])
    win, riv = winner_and_rival(g)
    assert win.tolist() == [0, 0, 2, 0] and riv.tolist() == [1, 2, 1, 1]
    close(rpcl_signs(g)[:3], [[1, -1e-4, 0], [1, 0, -1e-4], [0, -1e-4, 1]])


def test_rpcl_update_hand_case():
    # K = 3, D = 1, B = 3; gamma as in the test above -> hard weights (NOT times gamma):
    #   b0: (1, -1e-4, 0), b1: (1, 0, -1e-4), b2: (0, -1e-4, 1)
    # mu = (1, 3, 5), s2 = (.1, .1, .2); old m = (0, 1, 2), v = 1, alpha = 1/3.
    # N = (2, -2e-4, 1 - 1e-4)
    # k=0: m~ = 2, v~ = ((1-2)^2 + .1 + (3-2)^2 + .1)/2 = 1.1
    # k=1 (pure rival, N < 0): m~ = -1e-4(1 + 5)/(-2e-4 + 1e-10) = 3.0000015 -> pulled TOWARD its
    #      rival samples b0 and b2; v~ = 1e-4((1-m~)^2 + .1 + (5-m~)^2 + .2)/(2e-4 - 1e-10)
    #      = 8.3e-4/1.999999e-4 = 4.1500021
    # k=2: m~ = (5 - 3e-4)/(0.9999 + 1e-10) = 5.0002000;
    #      v~ = (-1e-4((3-m~)^2 + .1) + (5-m~)^2 + .2)/0.9999 = 0.1996099
    # m' = .95 (0, 1, 2) + .05 m~ = (0.1, 1.1000001, 2.1500100)
    # v' = .95 + .05 v~ = (1.005, 1.1575001, 0.9599805)
    # alpha~ = N/3; .95/3 + .05 alpha~ = (0.35, 0.3166633, 0.3333317), sum 0.999995
    #   -> alpha' = (0.3500018, 0.3166649, 0.3333333)
    g = t([[0.7, 0.2, 0.1], [0.6, 0.1, 0.3], [0.1, 0.3, 0.6]])
    old = GMMState(t([[0.0], [1.0], [2.0]]), torch.ones(3, 1), torch.full((3,), 1 / 3))
    new = gmm_update(rpcl_signs(g), t([[1.0], [3.0], [5.0]]), t([[0.1], [0.1], [0.2]]), old)
    close(new.mean, [[0.1], [1.1000000750], [2.1500100010]], rel=1e-6)
    close(new.var, [[1.005], [1.1575001038], [0.9599804960]], rel=1e-6)
    close(new.alpha, [0.35000175, 0.31666492, 0.33333333], rel=1e-6)
    # alpha clipping: old alpha = (.5, 0, .5). Component 1 only rivals: .95*0 + .05(-2e-4/3) < 0
    # -> clipped to 0, then (0.5083333, 0, 0.4916650)/0.9999983
    new = gmm_update(rpcl_signs(g), t([[1.0], [3.0], [5.0]]), t([[0.1], [0.1], [0.2]]), old._replace(alpha=t([0.5, 0.0, 0.5])))
    assert new.alpha[1].item() == 0.0
    s = 0.475 + 0.05 * 2 / 3 + 0.475 + 0.05 * (1 - 1e-4) / 3
    close(new.alpha, [(0.475 + 0.05 * 2 / 3) / s, 0.0, (0.475 + 0.05 * (1 - 1e-4) / 3) / s], rel=1e-6)


def test_rpcl_empty_component_drifts_to_origin():
    # Component 2 is neither winner nor rival of any sample: N_2 = 0 -> m~ = v~ = alpha~ = 0,
    # so m <- .95 m, v <- .95 v (drift to the origin / zero variance), alpha <- .95 alpha / sum.
    # b0: win 0 riv 1; b1: win 1 riv 0. alpha~ = ((1 - 1e-4)/2, (1 - 1e-4)/2, 0)
    # alpha' = (.95/4 + .05(.49995), same, .95/2) = (0.2624975, 0.2624975, 0.475) / 0.999995
    g = t([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1]])
    old = GMMState(t([[0.0], [1.0], [4.0]]), t([[1.0], [1.0], [2.0]]), t([0.25, 0.25, 0.5]))
    new = gmm_update(rpcl_signs(g), t([[0.0], [1.0]]), t([[1.0], [1.0]]), old)
    close(new.mean[2], [3.8])
    close(new.var[2], [1.9])
    close(new.alpha[2], 0.475 / 0.999995, rel=1e-6)
    # the variance never goes below the 1e-10 clip
    tiny = gmm_update(rpcl_signs(g), t([[0.0], [1.0]]), t([[1.0], [1.0]]), old._replace(var=t([[1.0], [1.0], [1e-10]])))
    assert tiny.var[2].item() == pytest.approx(1e-10, rel=1e-6)


def test_schedule_and_kl_weight():
    p = GMMPrior(3, 2)
    assert [s for s in range(495, 511) if p.is_rpcl_step(s)] == [501, 504, 507, 510]
    assert not p.is_rpcl_step(0) and not p.is_rpcl_step(3) and not p.is_rpcl_step(498)
    assert kl_weight(0) == pytest.approx(0.001)
    assert kl_weight(10000) == pytest.approx(1 - 0.999 * 0.9999**10000)


# --------------------------------------------------------------------------------------------
# pix2seq: loss terms (spec 4.6)
# --------------------------------------------------------------------------------------------


def test_alpha_and_gaussian_kl_hand_case():
    # gamma = (3/4, 1/4), alpha' = (1/2, 1/2):
    # L_alpha = .75 log 1.5 + .25 log .5 = 0.3040988 - 0.1732868 = 0.1308120
    close(alpha_kl(t([[0.75, 0.25]]), t([0.5, 0.5])), 0.13081204, rel=1e-6)
    # mu = 0, s2 = 1, m' = (0, 1), v' = (1, 2):
    # k0: 1/2 (log 1 + 1/1 - 1 - log 1) = 0;  k1: 1/2 (log 2 + (1 + 1)/2 - 1 - 0) = 1/2 log 2
    # L_G = .25 * .3465736 = 0.0866434
    lg = gaussian_kl(t([[0.75, 0.25]]), t([[0.0]]), t([[1.0]]), t([[0.0], [1.0]]), t([[1.0], [2.0]]))
    close(lg, 0.0866434, rel=1e-5)


def test_forward_stages_update_and_gradient_paths():
    torch.manual_seed(0)
    p = GMMPrior(4, 3)
    before = {k: v.clone() for k, v in p.state_dict().items()}
    z = torch.randn(5, 3, requires_grad=True)
    mu = torch.randn(5, 3, requires_grad=True)
    s2 = torch.rand(5, 3) + 0.1
    out = p(z, mu, s2, step=0)
    # the new state carries no gradient (spec 4.7) and the buffers are untouched until the step ends
    assert all(not x.requires_grad for x in out["new_state"])
    assert all(torch.equal(before[k], v) for k, v in p.state_dict().items())
    (out["loss_alpha"] + out["loss_gauss"]).backward()
    assert z.grad.abs().sum() > 0  # through gamma
    assert mu.grad.abs().sum() > 0
    # the update equals the EM update from the old state with gamma
    ref = gmm_update(out["gamma"].detach(), mu.detach(), s2, GMMState(before["mean"], before["var"], before["alpha"]))
    assert p.on_step_end() is True
    close(p.mean, ref.mean, rel=0, abs=0)
    close(p.alpha, ref.alpha, rel=0, abs=0)
    assert p.on_step_end() is False  # nothing staged twice
    # eval mode never stages
    p.eval()
    p(z, mu, s2, step=1)
    assert p.on_step_end() is False


def test_nonfinite_update_is_not_written():
    p = GMMPrior(3, 2)
    before = p.mean.clone()
    mu = t([[float("nan"), 0.0], [0.0, 0.0]])
    with pytest.warns(UserWarning, match="NaN"):
        p(torch.zeros(2, 2), mu, torch.ones(2, 2), step=0)
        assert p.on_step_end() is False
    assert torch.equal(p.mean, before)


def _train_prior(p, steps, start, seed):
    """Feed `steps` batches drawn from two clusters, writing the prior after each."""
    g = torch.Generator().manual_seed(seed)
    for s in range(start, start + steps):
        centres = t([[0.0, 0.0], [3.0, 3.0]])[torch.randint(0, 2, (32,), generator=g)]
        mu = centres + 0.3 * torch.randn(32, 2, generator=g)
        s2 = torch.full((32, 2), 0.05)
        p(mu + s2.sqrt() * torch.randn(32, 2, generator=g), mu, s2, step=s)
        p.on_step_end()


def test_checkpoint_resume_is_exact(tmp_path):
    torch.manual_seed(1)
    a = GMMPrior(4, 2, rpcl_start=5)
    _train_prior(a, 12, 0, seed=0)
    save_file(a.state_dict(), tmp_path / "prior.safetensors")
    torch.manual_seed(2)  # a different random init, fully overwritten by the load
    b = GMMPrior(4, 2, rpcl_start=5)
    b.load_state_dict(load_file(tmp_path / "prior.safetensors"))
    assert set(b.state_dict()) == {"mean", "var", "alpha"}
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v)
    _train_prior(a, 9, 12, seed=5)
    _train_prior(b, 9, 12, seed=5)
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v)


def test_rpcl_eliminates_a_loser_that_em_keeps():
    # Two data clusters, three components; component 2 starts far away. EM drags it onto a
    # cluster (a loser with alpha ~ 1e-3 after 200 steps: it shares a cluster, EM never kills
    # it). From then on, RPCL steps (winner-take-all alpha estimates, every 3rd step) bleed its
    # alpha away while plain EM keeps it. Nothing is removed: K stays 3, n_alive drops to 2.
    torch.manual_seed(0)
    em = GMMPrior(3, 2, rpcl_start=10**9, alive_threshold=1e-3)
    em.mean.copy_(t([[0.0, 0.0], [3.0, 3.0], [40.0, -40.0]]))
    _train_prior(em, 200, 0, seed=3)
    assert 5e-4 < em.alpha[2] < 5e-3
    rp = GMMPrior(3, 2, rpcl_start=199, alive_threshold=1e-3)
    rp.load_state_dict(em.state_dict())
    _train_prior(em, 200, 200, seed=4)
    _train_prior(rp, 200, 200, seed=4)
    assert em.alpha[2] > 5e-4 and em.n_alive() == 3
    assert rp.alpha[2] < 2e-4 and rp.n_alive() == 2
    assert rp.alpha.shape == (3,)


def test_sample_from_component():
    p = GMMPrior(3, 2)
    p.var.fill_(1e-8)
    z, k = p.sample(4, component=2, generator=torch.Generator().manual_seed(0))
    assert k.tolist() == [2, 2, 2, 2]
    close(z, p.mean[2].expand(4, 2), rel=0, abs=1e-3)
    p.alpha.copy_(t([0.0, 1.0, 0.0]))
    _, k = p.sample(6, generator=torch.Generator().manual_seed(0))
    assert k.tolist() == [1] * 6
    with pytest.raises(ConfigError, match="component 3"):
        p.sample(1, component=3)


# --------------------------------------------------------------------------------------------
# pix2seqH: the hierarchy (spec section 5)
# --------------------------------------------------------------------------------------------


def test_diag_heavy_init():
    q = diag_heavy_q(16)  # (1 + 16 I)/32 per column: diag 17/32, off 1/32
    close(torch.diagonal(q), torch.full((16,), 17 / 32), rel=1e-7)
    assert q[0, 1].item() == pytest.approx(1 / 32)
    h = HierarchicalPrior(3, 3, z_size=2)
    close(h.q_j_given_i, [[4 / 6, 1 / 6, 1 / 6], [1 / 6, 4 / 6, 1 / 6], [1 / 6, 1 / 6, 4 / 6]], rel=1e-6)
    close(h.q_i, [1 / 3] * 3)
    with pytest.raises(ConfigError, match="must equal"):
        HierarchicalPrior(4, 3)


def test_calculate_prob_shift_and_clip():
    # z = 0, m = (0, 1, 60), v = 1: l = (0, -1/2, -1800) (no 2 pi constant);
    # l + 700 - max = (700, 699.5, -1100) -> clip (700, 699.5, -700); P = exp in float64.
    p = hierarchy_log_prob(t([[0.0]]), t([[0.0], [1.0], [60.0]]), t([[1.0], [1.0], [1.0]]))
    assert p.dtype == torch.float64
    close(p[0, 1] / p[0, 0], math.exp(-0.5), rel=1e-6)
    close(p[0, 2], math.exp(-700.0), rel=1e-6)


TINY_OLD = HierarchyState(t([[0.0], [2.0]]), t([[1.0], [1.0]]), t([0.5, 0.5]), t([[0.75, 0.25], [0.25, 0.75]]))


def test_update_em_hand_case():
    # J = I = 2, D = 1, B = 1, z = mu = 0, s2 = 1. Old: m = (0, 2), v = 1, q(i) = 1/2,
    # Q = q(j|i) = [[.75, .25], [.25, .75]] (the diagonal-heavy init for J = 2).
    # q_j0 = Q q_i = (1/2, 1/2);  P0 ∝ (1, e^-2) -> gamma0 = (0.8807971, 0.1192029)
    # m~ = gamma0 * 0 / N = 0 -> m' = (0, 1.9)
    # v~_j = (0 - m'_j)^2 + 1 (about the BLENDED mean) = (1, 4.61) -> v' = (1, 1.1805)
    # q_j' = .95/2 + .05 gamma0 = (0.5190399, 0.4809601)
    # P: l_1 = -1/2 1.9^2/1.1805 - 1/2 log 1.1805 = -1.6119822 -> P ∝ (1, 0.1994558)
    # p_j = q_j' P / sum = (0.8439845, 0.1560155)
    # rho[:, i] ∝ P_j Q_ji: col 0 (.75, .0498640) -> (0.9376489, 0.0623511);
    #                      col 1 (.25, .1495919) -> (0.6255961, 0.3744039)
    # merge: C[1,0] > 0, C[0,1] > 0 -> win = (1, 0) -> T = 1/2 everywhere
    # Q' = .95 Q + .05 * .5 = [[.7375, .2625], [.2625, .7375]]
    # L'_i = sum_j P_j Q'_ji = (0.7898572, 0.4096037) -> p_i = (0.6585010, 0.3414990)
    # kappa[j, :] ∝ p_i * rho[j, :]: j=0 -> (0.7429374, 0.2570626); j=1 -> (0.2430679, 0.7569321)
    # q_i' = .95/2 + .05 p_i = (0.5079251, 0.4920749)
    new, post = hierarchy_update(t([[0.0]]), t([[0.0]]), t([[1.0]]), TINY_OLD, rpcl=False)
    close(new.mean, [[0.0], [1.9]])
    close(new.var, [[1.0], [1.1805]])
    close(post.p_j, [[0.8439844553, 0.1560155447]])
    close(post.rho[0], [[0.9376489117, 0.6255961202], [0.0623510883, 0.3744038798]])
    close(new.q_j_given_i, [[0.7375, 0.2625], [0.2625, 0.7375]])
    close(post.p_i, [[0.6585010413, 0.3414989587]])
    close(post.p_ji[0], [[0.7429373840, 0.2570626160], [0.2430679400, 0.7569320600]])
    close(new.q_i, [0.5079250521, 0.4920749479])


def test_update_rpcl_hand_case():
    # Same batch, RPCL variant (spec 5.4).
    # Level k: win 0, riv 1; w = gamma0 * (1, -1e-4) = (0.8807971, -1.1920292e-5)
    #   m~_1 = w*0/N = 0 -> m' = (0, 1.9) as before; v~_1 = 4.61 * N_1/(N_1 + 1e-10)
    #   = 4.61 * 1.1920292e-5/1.1919292e-5 = 4.6100387 -> v'_1 = 1.1805019
    #   q_j' = (.475 + .05 * .8807971, .475 - .05 * 1.1920292e-5) / sum = (0.5221523, 0.4778477)
    # Merge: col 0 win 1, rival = argmax of the zeroed column = 0; col 1 win 0, rival 0 again
    #   T = [[.5 - 1e-4, .5 - 1e-4], [.5, .5]] -> Q' = [[.737495, .262495], [.2625, .7375]]/.999995
    # p_j and p_i follow as in the EM case with these numbers (see the scratch below):
    #   l_1 = -1/2 1.9^2/1.1805019 - 1/2 log 1.1805019; p_j = q_j' P / sum = (0.8456193, 0.1543807)
    #   p_i = (0.6585023, 0.3414977) (unpenalised)
    # q(i): win' 0, riv' 1: (.475 + .05 * .6585023, .475 - .05e-4 * .3414977)/sum = (0.5167494, 0.4832506)
    new, post = hierarchy_update(t([[0.0]]), t([[0.0]]), t([[1.0]]), TINY_OLD, rpcl=True)
    close(new.var, [[1.0], [1.1805019337]])
    close(post.p_j, [[0.8456192968, 0.1543807032]])
    close(new.q_j_given_i, [[0.7374986875, 0.2624963125], [0.2625013125, 0.7375036875]], rel=1e-6)
    close(post.p_i, [[0.6585022517, 0.3414977483]])
    close(new.q_i, [0.5167494333, 0.4832505667])


def test_merge_target_three_units():
    # rho (single sample), rows j, columns i, each column sums to 1:
    rho = t([[[0.6, 0.1, 0.3], [0.1, 0.5, 0.3], [0.3, 0.4, 0.4]]])
    # C[c, i] = rho[i, i] rho[c, i], C[i, i] = 0:
    #   col 0 (rho00 = .6): C[1,0] = .06, C[2,0] = .18 -> win 2, rival 1
    #   col 1 (rho11 = .5): C[0,1] = .05, C[2,1] = .20 -> win 2, rival 0
    #   col 2 (rho22 = .4): C[0,2] = .12, C[1,2] = .12 -> tie: win 0 (lowest), rival 1
    em = [[0.5, 0.0, 0.5], [0.0, 0.5, 0.0], [0.5, 0.5, 0.5]]
    close(merge_target(rho), em, rel=0, abs=1e-7)
    rp = [[0.5, -1e-4, 0.5], [-1e-4, 0.5, -1e-4], [0.5, 0.5, 0.5]]
    close(merge_target(rho, rpcl=True), rp, rel=0, abs=1e-7)
    # Q' = .95 Q + .05 T with Q the 3x3 diag-heavy init (2/3, 1/6): column 0 ->
    # (.95*2/3 + .025, .95/6, .95/6 + .025) = (0.6583333, 0.1583333, 0.1833333), sums to 1
    q = diag_heavy_q(3)
    q_new = 0.95 * q + 0.05 * merge_target(rho)
    close(q_new[:, 0], [0.65833333, 0.15833333, 0.18333333], rel=1e-6)
    # an all-zero column i = 0 (rho00 = 0) -> winner 0 = i itself -> target 1.0 on the diagonal
    rho0 = t([[[0.0, 0.1, 0.3], [0.5, 0.5, 0.3], [0.5, 0.4, 0.4]]])
    close(merge_target(rho0)[:, 0], [1.0, 0.0, 0.0], rel=0, abs=0)


def test_structural_kl_hand_case():
    # gamma = (.8, .2), kappa = [[.75, .25], [.5, .5]] -> joint = [[.6, .2], [.1, .1]]
    # prior q_i Q = (.5, .5) * [[.75, .25], [.25, .75]] = [[.375, .125], [.125, .375]]
    # L_IJ = .6 log 1.6 + .2 log 1.6 + .1 log .8 + .1 log(.1/.375) = 0.2215130
    l = structural_kl(t([[0.8, 0.2]]), t([[[0.75, 0.25], [0.5, 0.5]]]), t([0.5, 0.5]), t([[0.75, 0.25], [0.25, 0.75]]))
    close(l, 0.22151296, rel=1e-5)


def test_stored_posterior_hand_case():
    # Stored state, z = 0: p_j = gamma0 = (0.8807971, 0.1192029);
    # L_i = sum_j P0_j Q_ji = (.75 + .25 e^-2, .25 + .75 e^-2) -> p_i = (0.6903985, 0.3096015)
    h = HierarchicalPrior(2, 2, z_size=1)
    for buf, v in zip(h.state(), TINY_OLD):
        buf.copy_(v)
    post = h.posterior(t([[0.0]]))
    close(post.p_j, [[1 / (1 + E2), E2 / (1 + E2)]])
    close(post.p_i, [[0.6903985390, 0.3096014610]])


def test_hierarchy_gradient_flows_through_update():
    # p_j depends on mu only through the updated means/variances (spec 5.8)
    torch.manual_seed(0)
    old = HierarchyState(torch.randn(3, 2), torch.ones(3, 2), torch.full((3,), 1 / 3), diag_heavy_q(3))
    z = torch.randn(4, 2)
    mu = z.clone().requires_grad_(True)
    s2 = (torch.rand(4, 2) + 0.1).requires_grad_(True)
    new, post = hierarchy_update(z, mu, s2, old)
    (post.p_j[:, 0].sum() + post.p_i[:, 1].sum()).backward()
    assert mu.grad.abs().sum() > 0 and s2.grad.abs().sum() > 0
    h = HierarchicalPrior(3, 3, z_size=2)
    out = h(z, mu, s2, step=0)
    assert all(not x.requires_grad for x in out["new_state"])
    assert out["p_j"].requires_grad and out["p_ji"].requires_grad


def test_hierarchy_checkpoint_and_schedule(tmp_path):
    torch.manual_seed(0)
    h = HierarchicalPrior(4, 4, z_size=2)
    assert [s for s in range(98, 108) if h.is_rpcl_step(s)] == [102, 105]
    g = torch.Generator().manual_seed(0)
    for s in range(0, 106):
        mu = torch.randn(16, 2, generator=g)
        h(mu, mu, torch.full((16, 2), 0.1), step=s)
        assert h.on_step_end()
    close(h.q_j_given_i.sum(0), torch.ones(4), rel=1e-6)
    close(h.q_i.sum(), 1.0, rel=1e-6)
    save_file(h.state_dict(), tmp_path / "h.safetensors")
    h2 = HierarchicalPrior(4, 4, z_size=2)
    h2.load_state_dict(load_file(tmp_path / "h.safetensors"))
    assert set(h2.state_dict()) == {"mean", "var", "q_i", "q_j_given_i"}
    for k, v in h.state_dict().items():
        assert torch.equal(h2.state_dict()[k], v)


def test_hierarchy_sampling():
    h = HierarchicalPrior(3, 3, z_size=2)
    h.var.fill_(1e-8)
    gen = torch.Generator().manual_seed(0)
    z, j, i = h.sample(5, component=1, generator=gen)
    assert j.tolist() == [1] * 5
    close(z, h.mean[1].expand(5, 2), rel=0, abs=1e-3)
    # unit 2 with q(j|2) one-hot on j = 0 -> every draw from Gaussian 0
    h.q_j_given_i[:, 2] = t([1.0, 0.0, 0.0])
    z, j, i = h.sample(4, unit=2, generator=gen)
    assert i.tolist() == [2] * 4 and j.tolist() == [0] * 4
    with pytest.raises(ConfigError):
        h.sample(1, unit=7)


def test_alive_counts_and_empty_batch():
    h = HierarchicalPrior(3, 3, z_size=1)
    # unit 2 dead (q_i at the 1e-10 floor); q(j) = Q q_i = (2/3*.5 + 1/6*.5, same, 1/6) -> all alive
    h.q_i.copy_(t([0.5, 0.5, 1e-10]))
    assert h.n_alive_units() == 2 and h.n_alive() == 3
    close(h.q_j(), [5 / 12, 5 / 12, 1 / 6], rel=1e-6)
    with pytest.raises(ValueError, match="empty batch"):
        h(torch.zeros(0, 1), torch.zeros(0, 1), torch.ones(0, 1), step=0)
    p = GMMPrior(3, 1)
    p.alpha.copy_(t([0.6, 0.4, 1e-5]))
    assert p.n_alive() == 2 and p.n_alive(threshold=1e-6) == 3
    with pytest.raises(ValueError, match="empty batch"):
        p(torch.zeros(0, 1), torch.zeros(0, 1), torch.ones(0, 1), step=0)
