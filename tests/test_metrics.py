"""Known-answer tests for the metrics (sketchknitter-and-metrics.md part 2, rpcl-pix2seq.md 8)."""

import importlib.util

import numpy as np
import pytest

from sketchlab.errors import ConfigError
from sketchlab.eval import metrics as M
from sketchlab.eval import topology as T

needs_gudhi = pytest.mark.skipif(importlib.util.find_spec("gudhi") is None,
                                 reason="the Geometry Score needs gudhi (pip install gudhi)")


# ---------------------------------------------------------------------------------------- FID


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_fid_of_a_set_with_itself_is_zero(rng, method):
    x = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12))
    assert abs(M.fid(x, x, method=method)) < 1e-8


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_frechet_distance_matches_closed_form_for_commuting_covariances(rng, method):
    # Same eigenvectors Q: Tr sqrt(S1 S2) = sum sqrt(s1 s2), so
    # FID = |mu1 - mu2|^2 + sum(s1 + s2 - 2 sqrt(s1 s2)).
    d = 6
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = M.frechet_distance(mu1, (q * s1) @ q.T, mu2, (q * s2) @ q.T, method=method)
    assert got == pytest.approx(expected, rel=1e-9)
    # diagonal, hand-computed: |(3, 4)|^2 + (1 + 4 - 2*2) + (9 + 1 - 2*3) = 25 + 1 + 4
    assert M.frechet_distance([0, 0], np.diag([1, 9]), [3, 4], np.diag([4, 1]),
                              method=method) == pytest.approx(30.0)


def test_fid_of_two_sampled_gaussians_approaches_the_closed_form(rng):
    n = 40000
    a = rng.normal(size=(n, 2)) * [1.0, 2.0]
    b = rng.normal(size=(n, 2)) * [3.0, 0.5] + [1.0, -1.0]
    expected = 2.0 + (1 + 9 - 2 * 3) + (4 + 0.25 - 2 * 1)
    assert M.fid(a, b) == pytest.approx(expected, rel=0.02)


def test_fid_uses_unbiased_covariance():
    x = np.array([[0.0], [2.0]])           # mean 1, unbiased variance 2 (population: 1)
    mu, sigma = M.feature_statistics(x)
    assert mu.tolist() == [1.0] and sigma.tolist() == [[2.0]]


def test_fid_survives_singular_covariances_and_methods_agree(rng):
    a, b = rng.normal(size=(6, 20)), rng.normal(size=(6, 20)) + 0.5  # rank 5 in 20 dimensions
    got = M.fid(a, b)
    assert np.isfinite(got)
    assert got == pytest.approx(M.fid(a, b, method="eigh"), rel=1e-4)


def test_fid_rejects_bad_input():
    with pytest.raises(ConfigError, match="NaN"):
        M.fid(np.array([[0.0, np.nan], [1, 2]]), np.ones((2, 2)))
    with pytest.raises(ConfigError, match="shapes"):
        M.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# ----------------------------------------------------------------------------------------- IS


def test_inception_score_known_answers():
    classes = 7
    one_hot_uniform = np.eye(classes)[np.arange(70) % classes] * 1000.0
    mean, std = M.inception_score(one_hot_uniform, splits=10)
    assert mean == pytest.approx(classes) and std == pytest.approx(0.0, abs=1e-9)
    assert M.inception_score(np.tile([1.0, 2.0, 3.0], (50, 1)))[0] == pytest.approx(1.0)
    # Splits are consecutive and each has its own marginal: two confident halves of different
    # classes score 1 per split (each split is one class) but 2 as one split.
    halves = np.array([[9.0, -9.0]] * 10 + [[-9.0, 9.0]] * 10) * 100
    assert M.inception_score(halves, splits=2)[0] == pytest.approx(1.0)
    assert M.inception_score(halves, splits=1)[0] == pytest.approx(2.0)


# ----------------------------------------------------------------------------------------- P/R


def _plain_precision_recall(real, fake, k):
    """The official algorithm, the plain way: full squared-distance matrices and np.partition."""
    def radii(x):
        d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        return np.partition(d, k, axis=1)[:, k]

    def coverage(q, m, r):
        d = ((q[:, None, :] - m[None, :, :]) ** 2).sum(-1)
        return float(np.mean((d <= r[None, :]).any(1)))

    return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


def test_precision_recall_identical_and_disjoint(rng):
    x = rng.normal(size=(300, 8))
    assert M.precision_recall(x, x) == (1.0, 1.0)
    assert M.precision_recall(x, x + 50.0) == (0.0, 0.0)


def test_precision_recall_hand_case_with_boundary():
    # k = 1, squared radii of real {0, 1, 3}: 1, 1, 4. Fake 2 is at squared distance 1 from real 1
    # and fake 5 at 4 from real 3: both count (membership is <=). Fake 7.5 is outside; -1 inside.
    real = np.array([[0.0], [1.0], [3.0]])
    fake = np.array([[2.0], [5.0], [7.5], [-1.0]])
    precision, recall = M.precision_recall(real, fake, k=1)
    assert precision == 0.75
    # fake radii (k = 1): 9, 9, 6.25, 6.25 -> every real point is covered
    assert recall == 1.0
    # a tight fake cluster: inside the real manifold, but it covers no real point
    assert M.precision_recall(real, np.array([[0.5], [0.6], [0.7], [0.8]]), k=1) == (1.0, 0.0)


def test_precision_recall_matches_plain_reference_with_ties(rng):
    real = rng.integers(0, 4, size=(120, 3)).astype(float)   # many duplicates and ties
    fake = rng.integers(0, 5, size=(90, 3)).astype(float)
    assert M.precision_recall(real, fake, k=3, block_size=37) == _plain_precision_recall(real, fake, 3)
    real, fake = rng.normal(size=(150, 5)), rng.normal(size=(170, 5)) * 1.3 + 0.2
    assert M.precision_recall(real, fake, k=3, block_size=64) == _plain_precision_recall(real, fake, 3)


def test_precision_recall_needs_more_than_k_points():
    with pytest.raises(ConfigError, match="more than 3"):
        M.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))


# ----------------------------------------------------------------------------------------- Rec


def test_recognition_accuracy_known_confusion():
    labels = [0, 0, 1, 1, 2, 2]
    # predicted order (best first): 0>1>2, 1>0>2, 1>2>0, 0>1>2, 2>0>1, 0>1>2
    # top-1 hits rows 0, 2, 4; top-2 also rows 1 and 3; row 5 (label 2) only at k = 3.
    logits = np.array([[3, 2, 1], [2, 3, 1], [1, 3, 2], [3, 2, 1], [2, 1, 3], [3, 2, 1]], float)
    acc = M.recognition_accuracy(logits, labels, ks=(1, 2, 3, 10))
    assert acc == {"rec@1": 3 / 6, "rec@2": 5 / 6, "rec@3": 1.0}  # k=10 > 3 classes: skipped
    with pytest.raises(ConfigError):
        M.recognition_accuracy(logits, [0, 1, 2, 3, 0, 0])


# ----------------------------------------------------------------------------------------- Ret


def _plain_ranks(gallery, queries):
    """The seeds' retrieval: MSE to every gallery code, stable sort (ties: lowest index)."""
    ranks = []
    for i, q in enumerate(queries):
        d = np.mean((gallery - q) ** 2, axis=1)
        ranks.append(int(np.nonzero(np.argsort(d, kind="stable") == i)[0][0]))
    return np.array(ranks)


def test_retrieval_identity_generation_scores_one(rng):
    codes = rng.normal(size=(257, 16))
    assert M.retrieval_metrics(codes, codes.copy(), block_size=50) == {
        "ret@1": 1.0, "ret@10": 1.0, "ret@50": 1.0}


def test_retrieval_hand_cases_and_ties():
    gallery = np.array([[0.0], [1.0], [2.0]])
    queries = np.array([[0.9], [1.0], [5.0]])
    assert M.retrieval_ranks(gallery, queries).tolist() == [1, 0, 0]
    assert M.retrieval_metrics(gallery, queries, ks=(1, 2)) == {"ret@1": 2 / 3, "ret@2": 1.0}
    # all tied -> own index wins only if it is the lowest
    gallery = np.array([[0.0], [2.0], [0.0]])
    queries = np.array([[1.0], [0.0], [0.0]])
    assert M.retrieval_ranks(gallery, queries).tolist() == [0, 2, 1]


def test_retrieval_matches_plain_reference(rng):
    gallery = rng.integers(-2, 3, size=(203, 4)).astype(float)   # duplicates -> exact ties
    queries = gallery + rng.integers(-1, 2, size=gallery.shape)
    assert (M.retrieval_ranks(gallery, queries, block_size=64) == _plain_ranks(gallery, queries)).all()
    gallery = rng.normal(size=(150, 32)) * 30
    queries = gallery + rng.normal(size=gallery.shape) * 25
    assert (M.retrieval_ranks(gallery, queries, block_size=40) == _plain_ranks(gallery, queries)).all()


def test_retrieval_counts_every_query(rng):
    # 13 queries: the seeds' 10 chunks of int(13/10) = 1 would have skipped 3 of them.
    gallery = rng.normal(size=(13, 4))
    queries = gallery.copy()
    queries[-3:] = gallery[0]             # the last three now retrieve item 0 instead
    assert M.retrieval_metrics(gallery, queries, ks=(1,))["ret@1"] == pytest.approx(10 / 13)
    with pytest.raises(ConfigError, match="same shape"):
        M.retrieval_metrics(gallery, queries[:5])


# ------------------------------------------------------------------------------------------ GS


def test_relative_living_times_unit_cases():
    e0 = T.relative_living_times(np.zeros((0, 2)), 1.0, i_max=5)
    assert e0.tolist() == [1, 0, 0, 0, 0]
    e1 = T.relative_living_times([[0.0, 2.0]], 2.0, i_max=5)
    assert e1.tolist() == [0, 1, 0, 0, 0]
    # [0, inf) -> [0, alpha_max); a second hole over [0.5, 0.75): 2 holes for a quarter of the time
    got = T.relative_living_times([[0.0, np.inf], [0.5, 0.75]], 1.0, i_max=5)
    assert got.tolist() == [0, 0.75, 0.25, 0, 0]
    # one hole over [0.25, 0.5): none for 3/4 of [0, 1]
    assert T.relative_living_times([[0.25, 0.5]], 1.0, i_max=3).tolist() == [0.75, 0.25, 0]


def test_relative_living_times_matches_the_reference_loop(rng):
    def loop(intervals, alpha_max, i_max):
        iv = [[b, alpha_max if np.isinf(d) else d] for b, d in intervals]
        pts = np.sort(np.unique(np.array(iv + [[0, alpha_max]]).flatten()))
        rlt = np.zeros(i_max)
        for j in range(len(pts) - 1):
            m = (pts[j] + pts[j + 1]) / 2
            s = sum(1 for b, d in iv if b <= m < d)
            if s < i_max:
                rlt[s] += pts[j + 1] - pts[j]
        return rlt / alpha_max

    for _ in range(20):
        births = rng.uniform(0, 1, size=rng.integers(1, 12))
        deaths = births + rng.uniform(0, 0.5, size=len(births))
        deaths[rng.random(len(deaths)) < 0.2] = np.inf
        iv = np.stack([births, deaths], 1)
        assert np.allclose(T.relative_living_times(iv, 1.2, 4), loop(iv, 1.2, 4))


def _circle_and_disk(rng, n=400):
    t = rng.uniform(0, 2 * np.pi, size=(2, n))
    circle = np.stack([np.cos(t[0]), np.sin(t[0])], 1)
    r = np.sqrt(rng.uniform(0, 1, n))
    disk = np.stack([r * np.cos(t[1]), r * np.sin(t[1])], 1)
    return circle, disk


@needs_gudhi
def test_geometry_score_separates_circle_from_disk(rng):
    # The reference repository's toy example: one hole vs none (gamma = 1/8 so the witness
    # complex fills the disk within alpha_max).
    circle, disk = _circle_and_disk(rng)
    circle2, _ = _circle_and_disk(rng)
    kw = dict(n=25, gamma=1 / 8, workers=1)
    mrlt_circle = T.mean_rlt(circle, **kw)
    assert mrlt_circle.sum() == pytest.approx(1.0) and int(np.argmax(mrlt_circle)) == 1
    assert int(np.argmax(T.mean_rlt(disk, **kw))) == 0
    same = M.geometry_score(circle, circle2, **kw)
    self_ = M.geometry_score(circle, circle, **kw)  # independent landmark draws: about 0
    different = M.geometry_score(circle, disk, **kw)
    assert self_ < 0.02 * different and same < 0.05 * different and different > 300


@needs_gudhi
def test_geometry_score_is_reproducible_and_scaled(rng):
    circle, disk = _circle_and_disk(rng, 200)
    a = M.geometry_score(circle, disk, n=8, workers=1, seed=3)
    assert a == M.geometry_score(circle, disk, n=8, workers=1, seed=3)
    raw = M.geometry_score(circle, disk, n=8, workers=1, seed=3, scale=1.0)
    assert a == pytest.approx(1000 * raw)


@pytest.mark.slow
@needs_gudhi
def test_geometry_score_workers_do_not_change_the_result(rng):
    circle, disk = _circle_and_disk(rng, 200)
    kw = dict(n=12, gamma=1 / 8, seed=5)
    pooled = M.geometry_score(circle, disk, workers=2, **kw)
    assert pooled == M.geometry_score(circle, disk, workers=1, **kw)


@pytest.mark.gpu
def test_cuda_paths_match_cpu(rng):
    real, fake = rng.normal(size=(700, 64)), rng.normal(size=(600, 64)) * 1.2
    assert M.precision_recall(real, fake, device="cuda") == M.precision_recall(real, fake)
    gallery = rng.integers(-2, 3, size=(900, 16)).astype(float)
    queries = gallery + rng.integers(-1, 2, size=gallery.shape)
    assert (M.retrieval_ranks(gallery, queries, device="cuda")
            == M.retrieval_ranks(gallery, queries)).all()
