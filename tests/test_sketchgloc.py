"""SketchGloc: data statistics, batch construction (round trip, noise, chunks, pbias), the nine
grid graphs against a brute-force perimeter fill, the relation GCN, the encoder's chunk states,
the loss, generation and the command line (spec sections 2 and 3.8)."""

import json
import math

import numpy as np
import pytest
import torch

from sketchlab.data import strokegrid as G
from sketchlab.data import strokes as S
from sketchlab.data.sketches import Sketches
from sketchlab.data.synthetic import make_doodle_splits
from sketchlab.errors import ConfigError, DataError
from sketchlab.models.sketchgloc import Config, SketchGloc, demo_config, root_config
from sketchlab.nn.mixture import mixture_loss_terms
from sketchlab.nn.relation_gcn import RelationGCN
from sketchlab.train.trainer import prepare_data

TINY = dict(enc_rnn_size=8, dec_model="lstm", dec_rnn_size=16, z_size=4, batch_size=8,
            max_valid_batches=1)
NO_AUG = dict(random_scale_factor=0.0, augment_stroke_prob=0.0)


def build(**over):
    torch.manual_seed(0)
    cfg = Config(**{**TINY, "max_seq_len": 60, "max_stroke_len": 4, "max_stroke_num": 5, **over})
    m = SketchGloc(cfg)
    m.scale_factor = 10.0
    return m


def sketch(*strokes):
    """stroke-3 from lists of absolute points per stroke."""
    return S.from_polylines([np.asarray(s, np.float32) for s in strokes])


# --------------------------------------------------------------------------------------------
# config and data sizes
# --------------------------------------------------------------------------------------------


def test_config_defaults_are_the_rebranch_code_values():
    c = Config()
    assert (c.enc_rnn_size, c.z_size, c.batch_size, c.dec_model, c.dec_rnn_size) == (512, 128, 100, "hyper", 512)
    assert (c.max_seq_len, c.max_stroke_len, c.max_stroke_num) == (-1, -1, -1)
    assert (c.use_recurrent_dropout, c.recurrent_dropout_prob) == (True, 0.9)
    assert (c.random_scale_factor, c.augment_stroke_prob, c.re_scale) == (0.1, 0.1, 0.0)
    assert (c.learning_rate, c.decay_rate, c.min_learning_rate) == (1e-3, 1.0, 1e-5)   # bug 11: constant
    assert (c.clip_mode, c.grad_clip, c.patience, c.eval_every) == ("norm", 1.0, 5, 0)
    assert (c.temperature, c.greedy_sampling, c.ret_gallery) == (0.24, False, "z_ori")
    assert c.stroke_pbias and c.faithful_roundtrip and c.clamp_stroke_len
    r = root_config()
    assert (r.max_stroke_len, r.enc_rnn_size, r.z_size, r.batch_size, r.re_scale) == (5, 256, 64, 300, 0.0)
    assert r.greedy_sampling and not r.use_recurrent_dropout and r.augment_stroke_prob == 0
    with pytest.raises(ConfigError, match="max_stroke_len"):
        SketchGloc(Config(**{**TINY, "max_seq_len": 10, "max_stroke_num": 3}))
    with pytest.raises(ConfigError, match="ret_gallery"):
        build(ret_gallery="nope")


def test_stroke_stats_by_hand():
    a = sketch([[0, 0], [1, 0], [2, 0]], [[5, 5]])                 # strokes of 3 and 1 points
    b = sketch([[0, 0], [1, 1]], [[3, 3], [4, 4], [5, 5], [6, 6]], [[9, 9], [9, 8]])
    c = np.concatenate([sketch([[0, 0], [1, 1]]), [[1, 1, 0], [1, 1, 0]]]).astype(np.float32)  # tail w/o pen-up
    sk = Sketches.from_list([a, b, c])
    lengths, counts = G.stroke_lengths_and_counts(sk)
    assert lengths.tolist() == [3, 1, 2, 4, 2, 2] and counts.tolist() == [2, 3, 1]
    assert G.stroke_stats([sk]) == (8, 4, 3)       # T = 8 rows; sorted[int(0.999 n)] is the max here
    assert G.percentile_999(np.arange(2000)) == 1998
    with pytest.raises(DataError):
        G.percentile_999(np.zeros(0))


def test_adapt_config_and_scale_factor():
    splits = make_doodle_splits(6, 3, 3, categories=["fish", "house"])
    data = prepare_data(SketchGloc, Config(**TINY), splits)
    T, L, Sn = G.stroke_stats(splits.values())
    assert (data.config.max_seq_len, data.config.max_stroke_len, data.config.max_stroke_num) == (T, L, Sn)
    assert data.config.max_seq_len == max(int(s.lengths.max()) for s in splits.values())
    assert data.scale_factor == pytest.approx(S.scale_factor(splits["train"]) + 1e-10)
    kept = prepare_data(SketchGloc, Config(**TINY, max_stroke_len=5), splits).config
    assert kept.max_stroke_len == 5 and kept.max_stroke_num == Sn          # the root's fixed L


# --------------------------------------------------------------------------------------------
# batch construction pieces (spec 2.3)
# --------------------------------------------------------------------------------------------


def roundtrip_reference(d):
    """The original's two loops, literally."""
    d = d.copy()
    absx = absy = 0.0
    for i in range(len(d) - 1):
        absx += d[i, 0]
        absy += d[i, 1]
        if i != 0 and d[i - 1, -1] == 1:
            d[i, 0], d[i, 1] = absx, absy
    absx = absy = 0.0
    for i in range(len(d) - 1):
        absx += d[i, 0]
        absy += d[i, 1]
        if i != 0 and d[i, -1] == 1:
            d[i + 1, 0] -= absx
            d[i + 1, 1] -= absy
    return d


def random_sketch(rng, n, p_up=0.3):
    d = np.zeros((n, 3), np.float32)
    d[:, :2] = rng.integers(-5, 6, (n, 2))
    d[:, 2] = rng.random(n) < p_up
    return d


def test_faithful_roundtrip_matches_the_original_loops():
    rng = np.random.default_rng(0)
    cases = [random_sketch(rng, n) for n in (1, 2, 3, 4, 7, 20, 40) for _ in range(30)]
    single_first = sketch([[3, 4]], [[5, 5], [6, 7]], [[1, 1], [2, 2]])
    single_last = sketch([[0, 0], [1, 1]], [[5, 5], [6, 6]], [[9, 9]])
    cases += [single_first, single_last, sketch([[1, 2]], [[3, 3]], [[4, 4]])]
    for d in cases:
        np.testing.assert_allclose(G.faithful_roundtrip(d), roundtrip_reference(d), atol=1e-5)
    # identity without single-point first/last strokes
    plain = sketch([[0, 0], [1, 1]], [[5, 5], [6, 6]], [[9, 9], [9, 8]])
    np.testing.assert_array_equal(G.faithful_roundtrip(plain), plain)
    # the single-point first stroke moves the second stroke by D_0 = (3, 4) and only it
    out = S.to_absolute(G.faithful_roundtrip(single_first))
    ref = S.to_absolute(single_first)
    np.testing.assert_allclose(out[1:3, :2] - ref[1:3, :2], [[3, 4], [3, 4]])
    np.testing.assert_allclose(out[3:, :2], ref[3:, :2])


def test_reorganise_moves_each_stroke_rigidly_but_not_the_first():
    d = sketch([[0, 0], [1, 0], [2, 0]], [[5, 5], [6, 5]], [[9, 9]])
    a = S.to_absolute(d)
    noisy = G.reorganise(a, a[:, 2], 2.0, np.random.default_rng(3))
    shift = np.random.default_rng(3).standard_normal((2, 2)) * 2.0      # one vector per moved stroke
    np.testing.assert_allclose(noisy[:3, :2], a[:3, :2])
    np.testing.assert_allclose(noisy[3:5, :2], a[3:5, :2] + shift[0], rtol=1e-6)
    np.testing.assert_allclose(noisy[5:, :2], a[5:, :2] + shift[1], rtol=1e-6)
    np.testing.assert_array_equal(noisy[:, 2], a[:, 2])
    np.testing.assert_array_equal(G.reorganise(a, a[:, 2], 0.0, np.random.default_rng(3)), a)


def chunks_reference(pen, L):
    """The original's chunking loop: (start, length) of each closed chunk."""
    out, cur, cnt = [], [], 0
    for k, p in enumerate(pen):
        cur.append(k)
        if p == 1:
            out.append((cur[0], len(cur)))
            cur, cnt = [], 0
        elif cnt == L:
            out.append((cur[0], len(cur)))
            cur, cnt = [], 0
        else:
            cnt += 1
    return out


def test_chunk_bounds_match_the_original_loop():
    rng = np.random.default_rng(1)
    for n in (1, 2, 5, 13, 40):
        for L in (1, 2, 5):
            for _ in range(20):
                pen = (rng.random(n) < 0.15).astype(np.float32)
                starts, lens = G.chunk_bounds(pen, L)
                assert list(zip(starts.tolist(), lens.tolist())) == chunks_reference(pen, L)
    # a stroke of L+1 points is ONE chunk of L+1 points; a longer one is cut every L+1 points
    pen = np.array([0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0], np.float32)
    starts, lens = G.chunk_bounds(pen, 3)
    assert starts.tolist() == [0, 4, 8] and lens.tolist() == [4, 4, 2]     # the 2-point tail is dropped


@pytest.mark.parametrize("L,Sn", [(5, 62), (3, 4), (1, 10), (20, 2)])
def test_chunk_batch_equals_the_per_sketch_chunks(L, Sn):
    rng = np.random.default_rng(L + Sn)
    ds = [random_sketch(rng, int(n), p) for n, p in zip(rng.integers(0, 40, 60), rng.choice([0.05, 0.3, 0.8], 60))]
    ds += [np.zeros((0, 3), np.float32), sketch([[3, 4]], [[5, 5], [6, 7]])]
    clean = [S.to_absolute(G.faithful_roundtrip(d)) for d in ds]
    noisy = [G.reorganise(c, c[:, 2], 0.3, rng) for c in clean]
    for clamp in (True, False):
        out = G.chunk_batch(clean, noisy, L, Sn, clamp)
        B = len(ds)
        ref = [np.zeros((B, Sn, L, 2), np.float32), np.zeros((B, Sn), np.int64),
               np.zeros((B, Sn, 4), np.float32), np.zeros((B, Sn, 4), np.float32)]
        for b in range(B):  # the per-sketch loop SketchGloc.make_batch ran before
            starts, lens = G.chunk_bounds(clean[b][:, 2], L)
            k = min(Sn, len(starts))
            starts, lens = starts[:k], lens[:k]
            for i in range(k):
                m = min(L, int(lens[i]))
                ref[0][b, i, :m] = noisy[b][starts[i]:starts[i] + m, :2]
            ref[1][b, :k] = np.minimum(lens, L) if clamp or k >= Sn else lens
            ref[2][b, :k] = G.chunk_boxes(noisy[b], starts, lens)
            ref[3][b, :k] = G.chunk_boxes(clean[b], starts, lens)
        for got, want in zip(out, ref):
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_stroke_pbias_formula_and_the_inverted_interval():
    d = sketch([[10, 20], [200, 150]])        # raw-pixel-like offsets, scale factor 1
    bx, by = G.stroke_pbias(d, 1.0, np.random.default_rng(5))
    u = np.random.default_rng(5).random(2)
    # bounds (origin included): x [0, 200], y [0, 150]; pixels +24
    low_x, high_x = -0.8 * 24, 0.8 * (48 - 224)
    low_y, high_y = -0.8 * 24, 0.8 * (48 - 174)
    assert bx == pytest.approx(low_x + (high_x - low_x) * u[0])
    assert by == pytest.approx(low_y + (high_y - low_y) * u[1])
    assert high_x < bx <= low_x < 0            # inverted: always a shift to the left
    # a sketch that fits the 48-px canvas gets the intended two-sided interval
    small = sketch([[-5, -5], [5, 5]])
    shifts = np.array([G.stroke_pbias(small, 1.0, np.random.default_rng(i)) for i in range(200)])
    assert shifts.min() < 0 < shifts.max() and shifts.min() >= -0.8 * 19 and shifts.max() <= 0.8 * 19
    # normalised units: the shift is divided by the scale factor
    bx2, _ = G.stroke_pbias(S.normalize(d, 4.0), 4.0, np.random.default_rng(5))
    assert bx2 == pytest.approx(bx / 4.0)


def test_origin_bound_includes_the_origin():
    assert G.origin_bound(sketch([[10, 10], [12, 11]])) == 12.0
    assert G.origin_bound(np.zeros((0, 3), np.float32)) == 0.0


# --------------------------------------------------------------------------------------------
# the nine grid graphs (spec 2.4)
# --------------------------------------------------------------------------------------------


def relgrid(lo_x, hi_x, lo_y, hi_y, x, y):
    gx = 0 if x < lo_x else (2 if x > hi_x else 1)
    gy = 0 if y < lo_y else (2 if y > hi_y else 1)
    return gx, gy


def get_box_reference(boxes):
    """The original's get_box: mark the 3x3 cells crossed by each side of j's box."""
    n = len(boxes)
    box = np.zeros((n, n, 3, 3))
    for i in range(n):
        x0, x1, y0, y1 = boxes[i]
        for j in range(n):
            a0, a1, b0, b1 = boxes[j]
            x_ld, y_ld = relgrid(x0, x1, y0, y1, a0, b0)
            x_rd, y_rd = relgrid(x0, x1, y0, y1, a1, b0)
            x_lu, y_lu = relgrid(x0, x1, y0, y1, a0, b1)
            x_ru, y_ru = relgrid(x0, x1, y0, y1, a1, b1)
            box[i, j, x_ld, y_ld:y_lu + 1] = 1
            box[i, j, x_ld:x_rd + 1, y_lu] = 1
            box[i, j, x_ru, y_ld:y_lu + 1] = 1
            box[i, j, x_ld:x_rd + 1, y_rd] = 1
    return box.reshape(n, n, 9)


def test_grid_graphs_match_a_brute_force_perimeter_fill():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = 7
        lo = rng.integers(0, 10, (n, 2)).astype(np.float32)      # integers: many boundary ties
        hi = lo + rng.integers(0, 8, (n, 2))
        boxes = np.stack([lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]], 1)
        got = G.grid_graphs(torch.from_numpy(boxes)[None], torch.ones(1, n, dtype=torch.bool))[0]
        np.testing.assert_array_equal(got.numpy(), get_box_reference(boxes))


def test_grid_graphs_by_hand_self_relation_and_masking():
    boxes = torch.tensor([[[0.0, 1.0, 0.0, 1.0],        # i: unit box
                           [2.0, 3.0, 0.5, 0.7],        # right of it, within its y range
                           [-1.0, 2.0, -1.0, 2.0],      # strictly encloses it
                           [0.2, 0.5, 0.2, 0.5],        # inside it
                           [0.0, 0.0, 0.0, 0.0]]])      # padded slot
    valid = torch.tensor([[True, True, True, True, False]])
    A = G.grid_graphs(boxes, valid)[0]
    assert A.shape == (5, 5, 9)
    assert A[0, 0].nonzero().flatten().tolist() == [G.SELF_RELATION]           # self: centre only
    assert A[0, 1].nonzero().flatten().tolist() == [3 * 2 + 1]                  # (gx, gy) = (2, 1)
    assert A[0, 2].nonzero().flatten().tolist() == [0, 1, 2, 3, 5, 6, 7, 8]     # ring, no centre
    assert A[0, 3].nonzero().flatten().tolist() == [4]
    assert A[1, 0].nonzero().flatten().tolist() == [0, 1, 2]   # box 0 left of box 1, spanning its y range
    for k in range(4):
        assert A[k, k].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert A[4].abs().sum() == 0 and A[:, 4].abs().sum() == 0                   # masked slot
    assert (A[:4, :4].sum(-1) >= 1).all()                                       # every pair relates


# --------------------------------------------------------------------------------------------
# make_batch (spec 2.3 + test 3.8 d)
# --------------------------------------------------------------------------------------------


def test_make_batch_targets_are_the_clean_absolute_sketch_and_chunks_rigid():
    m = build(**NO_AUG)
    d = sketch([[1, 1], [2, 1], [3, 1], [4, 1], [5, 1], [6, 2]],    # 6 points: chunks of 5 + 1 (L=4)
               [[10, 10], [11, 12]], [[20, 0], [20, 3], [21, 4]])
    clean = m.make_batch([d], False, np.random.default_rng(0))
    a = np.cumsum(d[:, :2], 0)
    n = len(d)
    np.testing.assert_allclose(clean["strokes"][0, 1:n + 1, :2].numpy(), a)                # ABSOLUTE targets
    np.testing.assert_array_equal(clean["strokes"][0, 1:n + 1, 3].numpy(), d[:, 2])
    assert clean["strokes"][0, 0].tolist() == [0, 0, 1, 0, 0] and (clean["strokes"][0, n + 1:, 4] == 1).all()
    assert clean["chunk_len"][0].tolist() == [4, 1, 2, 3, 0]        # 5-point chunk clamped to L=4
    np.testing.assert_allclose(clean["chunks"][0, 0].numpy(), a[:4])
    np.testing.assert_allclose(clean["chunks"][0, 1, :1].numpy(), a[5:6])
    np.testing.assert_allclose(clean["boxes"][0, 0].numpy(), [1, 5, 1, 1])               # all 5 points
    np.testing.assert_array_equal(clean["boxes"].numpy(), clean["boxes_clean"].numpy())
    noisy = m.make_batch([d], False, np.random.default_rng(0), re_scale=0.3)
    np.testing.assert_array_equal(noisy["strokes"].numpy(), clean["strokes"].numpy())    # target stays clean
    np.testing.assert_array_equal(noisy["boxes_clean"].numpy(), clean["boxes"].numpy())
    delta = (noisy["chunks"] - clean["chunks"])[0].numpy()
    ln = clean["chunk_len"][0].numpy()
    np.testing.assert_allclose(delta[0, :ln[0]], 0)                                      # first stroke fixed
    np.testing.assert_allclose(delta[1, :ln[1]], 0)                                      # (both its chunks)
    for k in (2, 3):                                                                      # rigid translations
        rows = delta[k, :ln[k]]
        np.testing.assert_allclose(rows, np.broadcast_to(rows[0], rows.shape), atol=1e-5)
        assert np.abs(rows[0]).sum() > 0
    bound = G.origin_bound(d)
    shift = np.random.default_rng(0).standard_normal((2, 2)) * 0.3 * bound
    np.testing.assert_allclose(delta[2, 0], shift[0], rtol=1e-5)
    np.testing.assert_allclose(delta[3, 0], shift[1], rtol=1e-5)
    assert m.make_batch([d], True, np.random.default_rng(0))["chunks"].equal(clean["chunks"])  # re_scale 0


def test_make_batch_keeps_the_first_S_chunks_and_the_faithful_length_rule():
    strokes = [[[i, 0], [i, 1], [i, 2], [i, 3], [i, 4]] for i in range(7)]   # 7 strokes of L+1 = 5 points
    d = sketch(*strokes)
    few = sketch(*strokes[:3])
    m = build(**NO_AUG, clamp_stroke_len=False)
    b = m.make_batch([d, few], False, np.random.default_rng(0))
    assert b["chunk_len"][0].tolist() == [4] * 5               # >= S chunks: the original clamps
    assert b["chunk_len"][1].tolist() == [5, 5, 5, 0, 0]       # < S chunks: L+1 (bug 12)
    assert b["strokes"].shape == (2, 61, 5)                    # the target keeps every stroke
    # chunk_next: the next PACKED chunk's first point (sketch 0's 5 chunks, then sketch 1's 3)
    np.testing.assert_allclose(b["chunk_next"][0, 4].numpy(), [0, 0 + 0])       # sketch 1, stroke 0 start
    np.testing.assert_allclose(b["chunk_next"][1, 0].numpy(), [1, 0])
    np.testing.assert_allclose(b["chunk_next"][1, 2].numpy(), [0, 0])          # last packed chunk: zeros
    assert build(**NO_AUG).make_batch([few], False, np.random.default_rng(0))["chunk_len"][0].tolist() == [4, 4, 4, 0, 0]
    # each kept chunk's box is its own (x = i for stroke i), not stretched over dropped chunks
    boxes = m.make_batch([d], False, np.random.default_rng(0))["boxes"][0].numpy()
    np.testing.assert_allclose(boxes[:, :2], [[i, i] for i in range(5)])
    np.testing.assert_allclose(boxes[:, 2:], [[0, 4]] * 5)


def test_make_batch_training_augmentation_is_seeded_and_gated():
    d = sketch([[0, 0], [1, 1], [2, 2], [3, 3], [4, 4], [5, 5]], [[7, 7], [8, 9]])
    m = build()
    b1 = m.make_batch([d, d], True, np.random.default_rng(7))
    b2 = m.make_batch([d, d], True, np.random.default_rng(7))
    for k in b1:
        assert b1[k].equal(b2[k])
    # pbias shifts the absolute target (0..9 data at scale 10: a fits-the-canvas shift)
    assert not b1["strokes"].equal(m.make_batch([d, d], False, np.random.default_rng(7))["strokes"])
    off = build(augment_stroke_prob=0.0)          # random_scale is gated by augment_stroke_prob
    b = off.make_batch([d], True, np.random.default_rng(7))
    np.testing.assert_allclose(b["strokes"][0, 1:len(d) + 1, :2].numpy(), np.cumsum(d[:, :2], 0))


def test_bad_input_gives_clear_errors():
    m = build()
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="empty batch"):
        m.make_batch([], False, rng)
    with pytest.raises(DataError, match=r"\(n, 3\)"):
        m.make_batch([np.zeros((4, 2), np.float32)], False, rng)
    empty = m.make_batch([np.zeros((0, 3), np.float32)], False, rng)    # a generated sketch that ended at once
    assert empty["chunk_len"].sum() == 0 and (empty["strokes"][0, 1:, 4] == 1).all()
    with pytest.raises(DataError, match="longer than"):
        m.make_batch([np.tile([[1, 0, 0]], (61, 1)).astype(np.float32)], False, rng)
    with pytest.raises(ConfigError, match="re_scale"):
        m.make_batch([sketch([[0, 0], [1, 1]])], False, rng, re_scale=-1)
    dot = sketch([[3, 3]])                       # zero extent: encodes and decodes without NaN
    m.eval()
    batch = m.make_batch([dot, dot], False, rng, re_scale=0.5)
    assert torch.isfinite(m.loss(batch)["loss"])
    m.train()
    with pytest.raises(ConfigError, match=">= 2"):
        m.loss(m.make_batch([dot], True, rng))


# --------------------------------------------------------------------------------------------
# networks and loss
# --------------------------------------------------------------------------------------------


def test_relation_gcn_against_a_per_relation_loop():
    torch.manual_seed(0)
    gcn = RelationGCN(6, 9)
    assert gcn.W1.shape == (9, 6, 6) and gcn.W2.shape == (9, 6, 6)
    assert gcn.W1.std().item() == pytest.approx(math.sqrt(2 / 6), rel=0.3)
    v = torch.randn(2, 4, 6)
    adj = (torch.rand(2, 4, 4, 9) < 0.4).float()
    out = gcn(v, adj)
    want = torch.zeros(2, 4, 6)
    for c in range(9):
        m = adj[..., c] @ v
        want += 0.5 * (m + torch.relu(torch.relu(m @ gcn.W1[c]) @ gcn.W2[c]))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_stroke_embeddings_are_each_chunks_final_bilstm_state():
    m = build(**NO_AUG, use_recurrent_dropout=False)
    m.eval()
    d = sketch([[1, 1], [2, 1], [3, 2]], [[5, 5], [6, 7]], [[9, 9], [9, 8]])
    b = m.make_batch([d], False, np.random.default_rng(0))
    v = m.stroke_embeddings(b)[0]
    H = m.config.enc_rnn_size
    a = np.cumsum(d[:, :2], 0)
    for k, (lo, hi) in enumerate([(0, 3), (3, 5), (5, 7)]):
        x = torch.from_numpy(a[lo:hi]).float()[None]
        s0 = torch.zeros(1, m.enc_fw.state_size)
        _, sf = m.enc_fw.sequence(x, s0, fast=False)
        _, sb = m.enc_bw.sequence(x.flip(1), s0, fast=False)
        torch.testing.assert_close(v[k, :H], m.enc_fw.output(sf)[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v[k, H:], m.enc_bw.output(sb)[0], rtol=1e-5, atol=1e-6)
    assert v[3:].abs().sum() == 0                               # empty slots
    m.static_chunks = lambda x: True                            # the CUDA-graph path: every slot, L steps
    torch.testing.assert_close(m.stroke_embeddings(b)[0], v, rtol=1e-5, atol=1e-6)
    # the GPU original with a chunk of L+1 points (only its first L are stored): the backward
    # LSTM runs L steps over [next packed chunk's first point, p_{L-1}, ..., p_1]; p_0 is unseen
    f = build(**NO_AUG, use_recurrent_dropout=False, clamp_stroke_len=False, max_stroke_len=2)
    f.load_state_dict(build(**NO_AUG, use_recurrent_dropout=False, max_stroke_len=2).state_dict())
    f.eval()
    d2 = sketch([[1, 1], [2, 1], [3, 2]], [[5, 5], [6, 7]])
    b2 = f.make_batch([d2], False, np.random.default_rng(0))
    assert b2["chunk_len"][0, :2].tolist() == [3, 2]
    a2 = np.cumsum(d2[:, :2], 0)
    x_bw = torch.from_numpy(np.stack([a2[3], a2[1]])).float()[None]
    _, sb = f.enc_bw.sequence(x_bw, torch.zeros(1, f.enc_bw.state_size), fast=False)
    torch.testing.assert_close(f.stroke_embeddings(b2)[0, 0, H:], f.enc_bw.output(sb)[0], rtol=1e-5, atol=1e-6)
    full = f.stroke_embeddings(b2)
    f.static_chunks = lambda x: True
    torch.testing.assert_close(f.stroke_embeddings(b2), full, rtol=1e-5, atol=1e-6)


def test_loss_is_L_R_with_z_mu_in_eval():
    m = build(**NO_AUG)
    d = make_doodle_splits(8, 2, 2, categories=["fish"])["train"]
    pts = d.points.copy()
    pts[:, :2] /= 20.0
    items = list(Sketches(pts, d.offsets))[:4]
    batch = m.make_batch(items, False, np.random.default_rng(0))
    m.eval()
    out = m.loss(batch)
    mu, _ = m.encode_dist(batch)
    raw = m.decode(batch["strokes"][:, :-1], mu)
    t = mixture_loss_terms(raw, batch["strokes"][:, 1:], training=False)
    torch.testing.assert_close(out["loss"], t["offset"] + t["pen"])
    assert set(out) == {"loss", "recon", "offset", "pen"}
    assert m.loss(batch)["loss"].equal(out["loss"])               # deterministic: z = mu
    # by hand: sum over time / B, pen masked by 1 - p3 in eval, unmasked in training
    per = mixture_loss_terms(raw, batch["strokes"][:, 1:], training=True, reduction="none")
    mask = 1 - batch["strokes"][:, 1:, 4]
    assert float(t["pen"].detach()) == pytest.approx(float((per["pen"] * mask).sum().detach() / 4), rel=1e-5)
    m.train()
    torch.manual_seed(1)
    tr = m.loss(batch)
    tr["loss"].backward()
    assert all(p.grad is not None for p in m.parameters())
    assert m.bn.num_batches_tracked.item() == 1                  # BN statistics move in training only


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------


def test_generate_heals_references_and_returns_offsets():
    m = build(**NO_AUG)
    refs = Sketches.from_list([sketch([[0, 0], [1, 1]], [[3, 3], [4, 2]]) for _ in range(3)],
                              category=np.array([0, 1, 0]), category_names=("a", "b"), scale_factor=10.0)
    with pytest.raises(ConfigError, match="no prior"):
        m.generate(n=2)
    g = m.generate(references=refs, greedy=True)
    assert len(g) == 3 and g.z.shape == (3, 4) and g.category.tolist() == [0, 1, 0]
    assert g.scale_factor == 10.0
    # the rollout is absolute; the result holds offsets whose cumsum is that rollout
    m.eval()
    batch = m.make_batch(list(refs), False, np.random.default_rng(0))
    z = m.encode(batch)
    from sketchlab.nn.sampler import sample_sequences
    seq = sample_sequences(m.decoder, m.head, m.initial_state(z), m.config.max_seq_len, z=z, greedy=True)
    absolute = S.stroke5_to_stroke3(seq[0].numpy())
    np.testing.assert_allclose(S.to_absolute(g[0])[:, :2], absolute[:, :2], atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(g.z), z)         # re_scale 0: every gallery is mu
    # the reorganisation noise changes the code; heal's strength is `displacement`; galleries differ
    a = m.generate(references=refs, displacement=0.5, seed=1, gallery="z")
    b = m.heal(refs, strength=0.5, seed=1, gallery="z")
    c = m.generate(references=refs, displacement=0.5, seed=1, gallery="clean")
    o = m.generate(references=refs, displacement=0.5, seed=1)                 # z_ori
    np.testing.assert_array_equal(a.z, b.z)
    assert not np.allclose(a.z, g.z) and not np.allclose(o.z, a.z)
    np.testing.assert_allclose(c.z, g.z, atol=1e-6)
    with pytest.raises(ConfigError, match="gallery"):
        m.generate(references=refs, gallery="x")
    with pytest.raises(ConfigError, match="temperature"):
        m.generate(references=refs, temperature=0)
    codes = m.decode_codes(torch.zeros(2, 4), greedy=True)
    assert len(codes) == 2 and codes.z.shape == (2, 4)


# --------------------------------------------------------------------------------------------
# command line, end to end
# --------------------------------------------------------------------------------------------


def test_cli_train_sample_heal_and_retrieval_hooks(tmp_path):
    from sketchlab.cli import main
    from sketchlab.runs import load_model

    run = tmp_path / "run"
    hp = "enc_rnn_size=8,dec_model=hyper,dec_rnn_size=16,hyper_num_units=8,hyper_embedding_size=4," \
         "z_size=4,batch_size=8,max_valid_batches=1,re_scale=0.1"
    assert main(["train", "sketchgloc", "--out", str(run), "--categories", "fish,house", "--max-steps", "3",
                 "--limit-per-category", "16", "--hparams", hp, "--no-progress", "--device", "cpu"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    c = cfg["config"]
    assert cfg["model"] == "sketchgloc" and min(c["max_seq_len"], c["max_stroke_len"], c["max_stroke_num"]) > 0
    assert main(["sample", str(run), "--out", str(tmp_path / "c.npz"), "--n", "4",
                 "--condition-on", "test", "--device", "cpu"]) == 0
    out = Sketches.load(tmp_path / "c.npz")
    assert len(out) == 4 and out.z is not None and out.category is not None and (tmp_path / "c.png").is_file()
    refs = make_doodle_splits(2, 2, 2, categories=["fish"])["test"]     # raw units, a user's file
    refs.save(tmp_path / "refs.npz")
    assert main(["sample", str(run), "--out", str(tmp_path / "h.npz"), "--strength", "0.3",
                 "--condition-on", str(tmp_path / "refs.npz"), "--greedy", "--device", "cpu"]) == 0
    assert len(Sketches.load(tmp_path / "h.npz")) == len(refs)
    assert main(["sample", str(run), "--out", str(tmp_path / "u.npz"), "--n", "2", "--device", "cpu"]) == 2
    model = load_model(run)
    assert isinstance(model, SketchGloc) and model.config.max_stroke_len == c["max_stroke_len"]
    # the evaluation suite's hooks: conditional samples carry their gallery code, Ret runs
    from sketchlab.runs import model_run_hooks
    from sketchlab.eval.metrics import retrieval_metrics

    hooks = model_run_hooks(run)
    gen = hooks.sample(refs)
    assert len(gen) == len(refs) and gen.z.shape == (len(refs), 4)
    ret = retrieval_metrics(gen.z, hooks.encode(gen), ks=(1, 2))
    assert set(ret) == {"ret@1", "ret@2"}
    assert retrieval_metrics(gen.z, gen.z, ks=(1,))["ret@1"] == 1.0      # spec 3.8 (e)


def _original_retrieval_offsets(absolute: np.ndarray) -> np.ndarray:
    """retrieval.py's conversion of a generated absolute sketch back to offsets, as written: the
    loop runs one iteration too many, so at ii = n-1 row 0 subtracts row -1 (by then an offset)."""
    seq = absolute.copy()[None]
    n = seq.shape[1]
    for ii in range(n):
        seq[0, n - ii - 1, :2] -= seq[0, n - ii - 2, :2]
    return seq[0]


def test_ret_query_shift_is_the_original_retrieval_loop():
    m = build(ret_query_shift=True)
    absolute = [np.array([[3.0, 4.0, 0], [5.0, 4.5, 0], [6.0, 7.0, 1], [2.0, 1.0, 0], [2.5, 0.0, 1]], np.float32),
                np.array([[-1.0, 2.0, 1]], np.float32),                      # one point: start -> 0
                np.array([[0.5, 0.5, 0], [1.5, -0.5, 1]], np.float32)]
    generated = Sketches.from_list([S.to_offsets(a) for a in absolute], scale_factor=10.0)
    shifted = m.retrieval_queries(generated)
    for a, q in zip(absolute, shifted):
        np.testing.assert_allclose(q, _original_retrieval_offsets(a), atol=1e-6)
    # by hand for the first: start (3, 4) minus the last offset (0.5, -1.0)
    np.testing.assert_allclose(shifted[0][0], [2.5, 5.0, 0.0])
    np.testing.assert_allclose(shifted[0][1:], generated[0][1:])             # the rest unchanged
    assert shifted.scale_factor == 10.0
    # the whole query is translated by -(last offset)
    np.testing.assert_allclose(S.to_absolute(shifted[0])[:, :2], absolute[0][:, :2] - [0.5, -1.0], atol=1e-6)
    # off by default; the Ret queries are the (shifted) sketches encoded
    plain = build()
    assert plain.retrieval_queries(generated) is generated
    plain.load_state_dict(m.state_dict())
    np.testing.assert_allclose(m.encode_queries(generated).numpy(),
                               plain.encode_sketches(shifted).numpy(), atol=1e-6)
    assert not np.allclose(m.encode_queries(generated).numpy(), plain.encode_queries(generated).numpy())
    from sketchlab.models.sketchgloc import paper_config
    assert paper_config().ret_query_shift and not Config().ret_query_shift


def test_demo_config_is_small():
    c = demo_config()
    assert (c.enc_rnn_size, c.dec_rnn_size, c.z_size) == (64, 128, 32)
    assert demo_config(z_size=8).z_size == 8


@pytest.mark.realdata
def test_real_data_sizes_and_a_batch(shared_data):
    from sketchlab.data.npz import load_npz

    path = shared_data / "sketchrnn" / "aaron_sheep.npz"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    splits = load_npz(path)
    data = prepare_data(SketchGloc, Config(**TINY), splits)
    c = data.config
    assert (c.max_seq_len, c.max_stroke_len, c.max_stroke_num) == (250, 131, 62)   # fluffy sheep
    m = SketchGloc(c)
    m.setup_from_data(data)
    b = m.make_batch([data.splits["train"][i] for i in range(8)], True, np.random.default_rng(0))
    assert torch.isfinite(m.loss(b)["loss"])


def test_the_mixture_head_stays_float32_under_bf16_autocast():
    m = build(**NO_AUG)
    d = sketch([[0, 0], [1, 1], [2, 2]], [[5, 5], [6, 7]])
    batch = m.make_batch([d, d], False, np.random.default_rng(0))
    z = torch.zeros(2, m.config.z_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = m.decode(batch["strokes"][:, :-1], z)
    assert raw.dtype == torch.float32
