"""SP-gra2seq: the patch cropper, graph, encoder, clustering loss and data scale against hand
computations (spec sp-gra2seq-sketchgloc.md 1.3-1.9, 3.8), a cv2 cross-check of the rasteriser,
generation and the command line."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sketchlab.data import strokes as S
from sketchlab.data.patches import (PatchGeometry, SeedStream, make_graph, node_mask, plan_batch,
                                    plan_sketch, render_nodes)
from sketchlab.data.sketches import Sketches
from sketchlab.data.synthetic import make_doodles
from sketchlab.errors import ConfigError, DataError
from sketchlab.models.sp_gra2seq import Config, SPGra2Seq, all_column_std, demo_config, zero_extent
from sketchlab.nn.graph import PatchCNN, proximity_adjacency
from sketchlab.train import checkpoint as ckpt
from sketchlab.train.trainer import prepare_data

TINY = dict(graph_picture_size=16, cnn_channels=(4, 8, 8), dec_rnn_size=16, z_size=8,
            num_mixture=5, batch_size=4, max_valid_batches=1)

# A toy sketch in normalised units whose rendered extent is exactly 10 units -> f = 64.
TOY = np.array([
    (1, 0, 0),    # 0: row 0, drawn from P_-1 (bug 4)
    (1, 0, 0),    # 1
    (1, 0, 0),    # 2
    (1, 0, 0),    # 3
    (1, 0, 0),    # 4
    (1, 0, 1),    # 5: end of stroke 1
    (0, 5, 1),    # 6: move onto a dot; the dot's own pen-up is ignored (bug 5)
    (2, 5, 0),    # 7: so this segment from the dot is drawn
    (1, 0, 0),    # 8
    (1, 0, 1),    # 9
], np.float32)


@pytest.fixture(scope="module")
def doodles():
    raw = make_doodles(4, ["fish", "house"])
    return raw.in_units(S.scale_factor(raw))


def build(sketches, **over):
    torch.manual_seed(0)
    return SPGra2Seq(Config(**{**TINY, "max_seq_len": int(sketches.lengths.max()), **over}))


# --------------------------------------------------------------------------------------------
# rasteriser and cropper (1.3)
# --------------------------------------------------------------------------------------------


def test_toy_sketch_geometry_centres_and_dot_quirk():
    plan = plan_sketch(TOY)
    # extent 10 units -> f = 64; P_-1 = (-min Q'x - S'_0x + 17, -min Q'y - S'_0y + 17)
    assert plan.side == 640 + 34
    P = {-1: (-111, 17), 0: (-47, 17), 1: (17, 17), 2: (81, 17), 3: (145, 17), 4: (209, 17),
         5: (273, 17), 6: (273, 337), 7: (401, 657), 8: (465, 657), 9: (529, 657)}
    drawn = [0, 1, 2, 3, 4, 5, 7, 8, 9]          # row 6 is the move; row 7 from the dot is drawn
    assert plan.segments.tolist() == [[*P[k - 1], *P[k]] for k in drawn]
    # first patch at the initial pen position, then every 4th point; next stroke at its start
    assert plan.n == 3
    assert plan.centres[:3].tolist() == [list(P[-1]), list(P[3]), list(P[6])]
    assert plan.ok.tolist() == [True] * 3 + [False] * 17
    assert not plan.masked.any() and plan.mask_id == []


def test_int16_truncation_toward_zero_and_drift():
    sk = np.array([(0, 0, 0), (0, 5, 0), (0, 5, 0), (0.03, 0, 0), (-0.03, 0, 0), (0.02, 0, 1)],
                  np.float32)
    plan = plan_sketch(sk)                    # h = 5 -> f = 128: 3.84 -> 3, -3.84 -> -3, 2.56 -> 2
    xs = [s[2] - s[0] for s in plan.segments.tolist()]
    assert xs == [0, 0, 0, 3, -3, 2]
    # the truncated extent makes the drawing larger than the render size (1.3 step 1)
    sk2 = np.array([(0, 0, 0), (0, 1, 0), (0, 4.75, 1)], np.float32)   # int(4.75) = 4 -> f = 160
    assert plan_sketch(sk2).side == 760 + 34


def test_at_most_20_patches_and_one_uniform_per_candidate():
    line = np.zeros((120, 3), np.float32)
    line[:, 0] = 1.0
    line[-1, 2] = 1
    seeds = SeedStream(np.full(100, 0.5))
    plan = plan_sketch(line, mask_prob=0.3, rng=seeds)
    assert plan.n == 20 and plan.ok.all()
    assert seeds.pos == 20                     # the 21st candidate breaks before its draw
    step = plan.segments[1, 2] - plan.segments[1, 0]          # every row: the same int offset
    assert (np.diff(plan.centres[:, 0]) == 4 * step).all() and (plan.centres[:, 1] == plan.centres[0, 1]).all()


def test_masking_precedes_cropping_and_global_image():
    seeds = SeedStream([0.5, 0.0, 0.5])        # only candidate 1 falls under mask_prob 0.1
    geom = PatchGeometry(256)
    nodes, n, mask_id = make_graph(TOY, 0.1, seeds)
    clean, n0, _ = make_graph(TOY)
    assert (n, mask_id, n0) == (3, [1], 3) and seeds.pos == 3
    assert (nodes[2] == -1).all() and (clean[2] == 1).any()           # the masked patch is blank
    # Neighbour crops lose exactly the pixels under the masked square (zeroed on the canvas first).
    plan = plan_sketch(TOY)
    cx, cy = plan.centres[1]
    for slot in (0, 2):
        x0, y0 = plan.centres[slot] - geom.half
        yy, xx = np.meshgrid(np.arange(256) + y0, np.arange(256) + x0, indexing="ij")
        under = (abs(yy - cy + 0.5) < 128) & (abs(xx - cx + 0.5) < 128)
        diff = (nodes[slot + 1] != clean[slot + 1]).numpy()
        assert not diff[~under].any()
        assert (nodes[slot + 1].numpy()[under] == -1).all()
    assert (nodes[0] <= clean[0]).all() and (nodes[0] < clean[0]).any()
    assert (nodes[4:] == -1).all() and nodes.min() == -1 and nodes.max() == 1


def _brute_force_canvas(plan, geom):
    """Every canvas pixel against every segment: ink within `reach` (the per-pixel reference)."""
    side = plan.side
    yy, xx = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    ink = torch.zeros(side, side, dtype=torch.bool)
    for x0, y0, x1, y1 in plan.segments.tolist():
        dx, dy = x1 - x0, y1 - y0
        t = (((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-12)).clamp(0, 1)
        ink |= (xx - x0 - t * dx) ** 2 + (yy - y0 - t * dy) ** 2 <= geom.reach ** 2
    return ink


def test_batched_render_matches_a_per_pixel_reference(doodles):
    geom = PatchGeometry(32)
    sketches = [doodles[i] for i in range(3)]
    batch = plan_batch(sketches, geom)
    nodes = render_nodes(batch, geom)
    for i, sk in enumerate(sketches):
        plan = plan_sketch(sk, geom)
        ink = _brute_force_canvas(plan, geom).float() * 255
        padded = F.pad(ink, (geom.pad,) * 4)
        for slot in range(plan.n):
            x, y = plan.centres[slot] + geom.pad - geom.half
            crop = padded[y:y + 32, x:x + 32] / 255 * 2 - 1
            assert torch.equal(nodes[i, slot + 1], crop), (i, slot)
        # node 0: cv2-style bilinear (half-pixel centres, clamped) = torch's align_corners=False
        glob = F.interpolate(ink[None, None], size=(32, 32), mode="bilinear", align_corners=False)
        assert torch.allclose(nodes[i, 0], torch.floor(glob[0, 0] + 0.5) / 255 * 2 - 1, atol=2.02 / 255)


def _cv2_make_graph(s, u, mask_prob, patch=256, P=20):
    """The original `make_graph_` (spec 1.3) with OpenCV, for the cross-check."""
    cv2 = pytest.importorskip("cv2")
    size = 640 * patch // 256
    q = np.cumsum(s[1:], axis=0)
    h, w = int(q[:, 1].max() - q[:, 1].min()), int(q[:, 0].max() - q[:, 0].min())
    s = np.concatenate([s[:, :2] * np.float32(size / (h if h >= w else w)), s[:, 2:]], 1).astype(np.int16)
    q = np.cumsum(s[1:].astype(np.int64), axis=0)
    t = int(size * 0.025)
    sx, sy = -q[:, 0].min() - s[0][0] + t + 1, -q[:, 1].min() - s[0][1] + t + 1
    M = max(q[:, 1].max() - q[:, 1].min(), q[:, 0].max() - q[:, 0].min())
    canvas = np.zeros((M + 2 * (t + 1),) * 2, np.uint8)
    pos, first_zero = np.array([sx, sy]), False
    for dx, dy, p in s:
        if first_zero:
            pos, first_zero = pos + (dx, dy), False
            continue
        new = pos + (dx, dy)
        cv2.line(canvas, (int(pos[0]), int(pos[1])), (int(new[0]), int(new[1])), 255, t)
        pos, first_zero = new, p != 0
    bnd, half = int(1.5 * patch), patch // 2
    canvas = np.pad(canvas, bnd)

    def traverse(fn):
        pos, first_zero, tmp, n = np.array([sx, sy]) + bnd, False, 0, 0
        for dx, dy, p in s:
            if first_zero:
                pos, first_zero = pos + (dx, dy), False
                continue
            if tmp % 4 == 0:
                x, y = int(pos[0]), int(pos[1])
                if n + 1 > P:
                    break
                fn(n, x, y, canvas[y - half:y + half, x - half:x + half])
                n += 1
            tmp += 1
            if p != 0:
                tmp, first_zero = 0, True
            pos = pos + (dx, dy)
        return n

    mask_id, it = [], iter(u)

    def mask(n, x, y, crop):
        if next(it) < mask_prob and crop.shape == (patch, patch):
            canvas[y - half:y + half, x - half:x + half] = 0
            mask_id.append(n)

    traverse(mask)
    nodes = np.zeros((P + 1, patch, patch), np.uint8)

    def take(n, x, y, crop):
        if crop.shape == (patch, patch):
            nodes[n + 1] = crop

    n = traverse(take)
    nodes[0] = cv2.resize(canvas[bnd:-bnd, bnd:-bnd], (patch, patch))
    return nodes.astype(np.float32), n, mask_id


def test_cross_check_against_cv2(doodles):
    ink = differ = glob_far = glob_px = 0
    for i in range(4):
        sk = doodles[i]
        u = np.random.default_rng(i).random(50)
        ref, n, mask_id = _cv2_make_graph(sk, u, 0.3)
        got, n2, mask_id2 = make_graph(sk, 0.3, SeedStream(u))
        got = np.round((got.numpy() + 1) / 2 * 255)
        assert (n, mask_id) == (n2, mask_id2)
        ink += (ref[1:] > 0).sum()
        differ += (ref[1:] != got[1:]).sum()
        glob_far += (np.abs(ref[0] - got[0]) > 1).sum()
        glob_px += ref[0].size
    # Outline pixels only (module docstring): measured 1.2 % on real sketches.
    assert differ / ink < 0.03, differ / ink
    assert glob_far / glob_px < 0.03, glob_far / glob_px


def _plans_equal(batch, plans):
    assert torch.equal(batch.segments, torch.from_numpy(np.concatenate([p.segments for p in plans]).reshape(-1, 4)))
    owner = np.concatenate([np.full(len(p.segments), i, np.int64) for i, p in enumerate(plans)])
    assert torch.equal(batch.seg_sketch, torch.from_numpy(owner))
    assert batch.side.tolist() == [p.side for p in plans] and batch.n.tolist() == [p.n for p in plans]
    for key in ("centres", "ok", "masked"):
        assert torch.equal(getattr(batch, key), torch.from_numpy(np.stack([getattr(p, key) for p in plans])))
    assert batch.mask_id == [p.mask_id for p in plans]


@pytest.mark.parametrize("stream", ["generator", "seeds"])
def test_batched_plan_equals_the_per_sketch_plans(doodles, stream):
    rng = np.random.default_rng(4)
    sketches = [doodles[i] for i in range(len(doodles))]
    for _ in range(60):  # + random pen patterns: runs of pen-ups, a pen-up in row 0, 1-row sketches
        n = int(rng.integers(1, 70))
        a = np.zeros((n, 3), np.float32)
        a[:, :2] = rng.normal(size=(n, 2)) * rng.choice([0.05, 1.0, 30.0])
        a[:, 2] = rng.random(n) < rng.choice([0.1, 0.5, 0.9])
        sketches.append(a)
    sketches += [np.zeros((0, 3), np.float32), np.array([[1, 1, 0], [0, 0, 1]], np.float32)]

    def draws():
        return np.random.default_rng(7) if stream == "generator" else SeedStream(np.random.default_rng(3).random(50000))

    for geom in (PatchGeometry(256), PatchGeometry(16, n_patches=5)):
        for p in (0.0, 0.4, 1.0):
            r = draws()
            plans = [plan_sketch(sk, geom, p, r, degenerate="blank") for sk in sketches]
            r2 = draws()
            _plans_equal(plan_batch(sketches, geom, p, r2, degenerate="blank"), plans)
            if p > 0:  # and the stream is left where the loop leaves it
                assert r.random() == r2.random()


def test_degenerate_input_gives_clear_errors():
    dot = np.array([(3, 4, 0), (0, 0, 1)], np.float32)
    with pytest.raises(DataError, match="zero extent"):
        plan_sketch(dot)
    assert plan_sketch(dot, degenerate="blank").n == 0
    with pytest.raises(DataError, match="empty batch"):
        plan_batch([])
    with pytest.raises(DataError, match="empty sketch"):
        plan_sketch(np.zeros((0, 3), np.float32))
    with pytest.raises(DataError, match="stroke-3"):
        plan_sketch(np.zeros((4, 2), np.float32))
    # a generated sketch that ended at once is encoded (for Ret) from blank nodes
    assert plan_sketch(np.zeros((0, 3), np.float32), degenerate="blank").n == 0
    with pytest.raises(ConfigError):
        plan_sketch(TOY, mask_prob=0.5)                    # no generator
    with pytest.raises(ConfigError, match="graph_picture_size"):
        PatchGeometry(31)
    # an extent under one unit is truncated to 0: the untruncated extent is used instead
    tiny = np.array([(0, 0, 0), (0.5, 0, 0), (0.1, 0.2, 1)], np.float32)
    assert plan_sketch(tiny).side > 640
    sk = Sketches.from_list([TOY, dot, np.array([(5, 5, 1)], np.float32)])
    assert zero_extent(sk).tolist() == [False, True, True]
    assert len(SPGra2Seq.filter_sketches(Config(), sk)) == 1


# --------------------------------------------------------------------------------------------
# node mask (1.4), CNN (1.5), graph (1.6)
# --------------------------------------------------------------------------------------------


def test_node_mask_faithful_and_clean():
    mk, v = node_mask(3, [0], 6, faithful=True)
    want = np.zeros((6, 6))
    want[:4, :4] = 1                           # n + 1 = 4 slots (bug 2)
    want[0, :] = want[:, 0] = 0                # masked patch 0 ...
    assert np.array_equal(mk, want)
    assert v.tolist() == [0] * 6               # ... invalidates every node (bug 1: column 0)
    mk, v = node_mask(3, [0], 6, faithful=False)
    assert v.tolist() == [0, 1, 1, 0, 0, 0] and mk.sum() == 4
    assert node_mask(6, [], 6)[0].sum() == 36  # n == P: all ones
    assert node_mask(2, [1], 6)[1].tolist() == [1, 0, 1, 0, 0, 0]


def test_patch_cnn_shapes_and_init():
    torch.manual_seed(0)
    cnn = PatchCNN(256)
    assert [c.out_channels for c in cnn.convs] == [8, 32, 64, 128, 256, 512, 512]
    assert all(c.bias is None and c.kernel_size == (2, 2) and c.stride == (2, 2) for c in cnn.convs)
    w5 = cnn.convs[5].weight                   # ReLU layer, C_in = 256
    assert abs(w5.std().item() - math.sqrt(2 / (4 * 256))) < 0.02 * math.sqrt(2 / (4 * 256))
    w6 = cnn.convs[6].weight                   # linear last layer
    assert abs(w6.std().item() - math.sqrt(1 / (4 * 512))) < 0.02 * math.sqrt(1 / (4 * 512))
    small = PatchCNN(16, (2, 3, 5))
    assert small(torch.randn(7, 1, 16, 16)).shape == (7, 5)
    with pytest.raises(ConfigError, match="cnn_channels"):
        PatchCNN(64, (8, 16))


def test_proximity_adjacency_by_hand():
    e = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]]], requires_grad=True)
    P = 4
    mk = torch.ones(1, P, P)
    v = torch.ones(1, P)
    A = proximity_adjacency(e, mk, v)
    cos = F.normalize(e.detach()[0], dim=1) @ F.normalize(e.detach()[0], dim=1).t()
    # row of patch 0: self (cos 1), best other = patch 1 (0.995); the third pick sees
    # [0, 0, 0, -1] after zeroing the winners (not -inf) and re-picks slot 0 (first maximum):
    # the self loop gets 1 + 0.2
    row = torch.zeros(P + 1)
    row[0] = 0.5
    row[1], row[2] = 1.0 + 0.2, 0.5 * cos[0, 1]
    assert torch.allclose(A[0, 1], row / row.sum(), atol=1e-6)
    # patch 3 (opposite of 0): self, then slot 2 (cos 0; the zeroed self is also 0 but slot 2
    # comes first), then slot 2 again: edges of weight 0
    row = torch.zeros(P + 1)
    row[0] = 0.5
    row[4] = 1.0 * 1.0
    row[3] = 0.5 * cos[3, 2] + 0.2 * cos[3, 2]
    assert torch.allclose(A[0, 4], row / row.sum(), atol=1e-6)
    assert torch.allclose(A[0, 0], torch.tensor([1.0, 0, 0, 0, 0]))
    assert torch.allclose(A.sum(-1), torch.ones(1, P + 1), atol=1e-6)
    # masked slot 1: zero row and column, no global link for it; others still row-normalised
    mk2, v2 = node_mask(4, [1], P)
    A2 = proximity_adjacency(e, torch.from_numpy(mk2)[None], torch.from_numpy(v2)[None])
    assert (A2[0, 2] == 0).all() and (A2[0, :, 2] == 0).all()
    assert torch.allclose(A2[0, [0, 1, 3, 4]].sum(-1), torch.ones(4), atol=1e-6)
    # directed, and gradients flow through the cosines (not detached)
    assert not torch.allclose(A, A.transpose(1, 2))
    (A * torch.randn_like(A)).sum().backward()
    assert e.grad is not None and e.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# model: encoder, losses, centroids (1.7-1.9)
# --------------------------------------------------------------------------------------------


def test_config_defaults_are_the_codes():
    c = Config()
    assert (c.batch_size, c.dec_rnn_size, c.z_size, c.graph_number, c.graph_picture_size) == (128, 1024, 128, 21, 256)
    assert (c.num_mixture, c.mask_prob, c.cluster_weight, c.centroid_decay, c.temperature) == (50, 0.1, 0.25, 0.75, 0.24)
    assert (c.learning_rate, c.decay_rate, c.min_learning_rate, c.grad_clip, c.clip_mode) == (1e-3, 0.9999, 1e-5, 1.0, "norm")
    assert (c.patience, c.reload_best, c.eval_every, c.valid_metric) == (5, True, 0, "recon")
    assert (c.scale_mode, c.node_mask) == ("faithful", "faithful")
    assert c.use_recurrent_dropout is False     # the original builds it but switches it off
    m = SPGra2Seq(Config(max_seq_len=10))
    assert m.decoder.recurrent_dropout_keep == 1.0
    assert m.bn1.momentum == 0.1 and m.bn1.eps == 1e-5 and m.bn2.momentum == 0.1
    assert m.fc_init.bias is None and m.head.linear.bias is None and m.fc_mu.bias is None
    assert m.decoder.state_size == 2048 and m.fc_init.weight.shape == (2048, 128)
    assert abs(m.fc_init.weight.std().item() - math.sqrt(5 / (3 * 128))) < 0.01
    assert abs(m.head.linear.weight.std().item() - math.sqrt(1 / 1024)) < 0.002
    assert abs(m.gcn_w1.weight.std().item() - math.sqrt(2 / 512)) < 0.002
    assert m.latent_mu.shape == (50, 512)


def test_encoder_is_the_spec_formula(doodles):
    m = build(doodles)
    m.train()
    batch = m.prepare_step(m.make_batch([doodles[i] for i in range(4)], False, np.random.default_rng(0)))
    e, mu, s = m.encode_dist(batch)
    B, N, D = e.shape
    A = proximity_adjacency(e[:, 1:], batch["mk"], batch["v"])
    X = F.batch_norm(F.relu(e).reshape(B * N, D), None, None, m.bn1.weight, m.bn1.bias, True, 0.0, 1e-5)
    h0 = A @ X.reshape(B, N, D)
    h2 = F.relu(F.relu(h0 @ m.gcn_w1.weight.t()) @ m.gcn_w2.weight.t())
    g = (h0 + h2).sum(1)
    y = torch.tanh(F.batch_norm(g, None, None, m.bn2.weight, m.bn2.bias, True, 0.0, 1e-5))
    assert torch.allclose(mu, y @ m.fc_mu.weight.t(), atol=1e-5)
    assert torch.allclose(s, y @ m.fc_sigma.weight.t(), atol=1e-5)


def test_cluster_loss_by_hand():
    m = SPGra2Seq(Config(**{**TINY, "num_mixture": 2, "max_seq_len": 10}))
    m.latent_mu.copy_(torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0, 0, 0, 0]]))
    m.latent_ready.fill_(True)
    e = torch.zeros(1, 3, 8)
    e[0, 0, :2] = torch.tensor([2.0, 0.5])    # -> centroid 0
    e[0, 1, :2] = torch.tensor([0.0, 3.0])    # -> centroid 1
    e[0, 2, :2] = torch.tensor([4.0, 0.0])    # -> centroid 0 but invalid
    v = torch.tensor([[1.0, 1.0, 0.0]])
    lc, new_mu, occ = m.cluster_terms(e, v)
    mu0 = 0.75 * torch.tensor([1.0, 0]) + 0.25 * torch.tensor([2.0, 0.5])
    mu1 = 0.75 * torch.tensor([0.0, 1]) + 0.25 * torch.tensor([0.0, 3.0])
    assert torch.allclose(new_mu[0, :2], mu0) and torch.allclose(new_mu[1, :2], mu1)
    want = (0.5 * ((torch.tensor([2.0, 0.5]) - mu0) ** 2).sum() + 0.5 * ((torch.tensor([0.0, 3.0]) - mu1) ** 2).sum()) / 2
    assert torch.allclose(lc, want) and occ.item() == 2
    # an empty cluster decays toward 0 (bug 7)
    lc, new_mu, occ = m.cluster_terms(e[:, :1], v[:, :1])
    assert torch.allclose(new_mu[1, :2], 0.75 * torch.tensor([0.0, 1])) and occ.item() == 1
    # before the first step the centroids are the first K patch embeddings, in order
    m.latent_ready.fill_(False)
    _, new_mu, _ = m.cluster_terms(e, v)
    assert torch.allclose(new_mu, e[0, :2])       # each assigned to itself: 0.75 e + 0.25 e
    _, new_mu, _ = m.cluster_terms(e, torch.ones(1, 3))   # e_2 joins cluster 0
    assert torch.allclose(new_mu[0, :2], 0.75 * e[0, 0, :2] + 0.25 * (e[0, 0, :2] + e[0, 2, :2]) / 2)


def test_loss_terms_centroid_update_and_eval(doodles):
    m = build(doodles)
    items = [doodles[i] for i in range(4)]
    batch = m.prepare_step(m.make_batch(items, True, np.random.default_rng(0)))
    before = m.latent_mu.clone()
    torch.manual_seed(1)
    out = m.loss(batch)
    assert torch.allclose(out["loss"], out["recon"] + 0.25 * out["cluster"])
    assert torch.equal(m.latent_mu, before)       # staged, written only after the optimiser step
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    out["loss"].backward()
    opt.step()
    m.on_step_end(0)
    assert m.latent_ready and not torch.equal(m.latent_mu, before)
    assert "latent_mu" in dict(m.named_buffers()) and "latent_mu" not in dict(m.named_parameters())
    # validation: L_R only, masked pen CE, no patch masking
    m.eval()
    vb = m.make_batch(items, False, np.random.default_rng(0))
    assert not vb["graph_masked"].any()
    out = m.loss(vb)
    assert set(out) >= {"loss", "recon"} and "cluster" not in out
    assert torch.equal(out["loss"], out["recon"])


def test_recurrent_dropout_switch(doodles):
    """use_recurrent_dropout=True drops the decoder's cell input in training only (two draws of one
    teacher-forced pass differ, eval passes agree); off (the default) it is deterministic."""
    for use in (True, False):
        m = build(doodles, use_recurrent_dropout=use, recurrent_dropout_prob=0.5)
        assert m.decoder.recurrent_dropout_keep == (0.5 if use else 1.0)
        x = torch.randn(3, 7, 5 + m.config.z_size)
        z = torch.randn(3, m.config.z_size)
        passes = []
        for train in (True, True, False, False):
            m.train(train)
            torch.manual_seed(len(passes))
            passes.append(m.decoder.sequence(x, m.initial_state(z))[0])
        assert torch.equal(passes[0], passes[1]) is not use
        assert torch.equal(passes[2], passes[3])


def test_training_masks_with_the_batch_generator(doodles):
    m = build(doodles, mask_prob=0.5)
    items = [doodles[i] for i in range(8)]
    a = m.make_batch(items, True, np.random.default_rng(3))
    b = m.make_batch(items, True, np.random.default_rng(3))
    c = m.make_batch(items, True, np.random.default_rng(4))
    assert torch.equal(a["graph_masked"], b["graph_masked"]) and a["graph_masked"].any()
    assert not torch.equal(a["graph_masked"], c["graph_masked"])
    # the masked slots' rows/columns are cut from Mk
    bi, slot = torch.nonzero(a["graph_masked"], as_tuple=True)
    assert (a["mk"][bi, slot] == 0).all() and (a["mk"][bi, :, slot] == 0).all()


# --------------------------------------------------------------------------------------------
# data scale (1.2, bug 3)
# --------------------------------------------------------------------------------------------


def test_scale_factor_modes_and_per_split_normalisation():
    rows = np.array([(3, 0, 0), (0, -3, 1)], np.float32)
    sk = Sketches.from_list([rows])
    vals = np.array([3, 0, 0, 0, -3, 1], np.float64)
    assert math.isclose(all_column_std(sk.points), vals.std(), rel_tol=1e-9)
    assert math.isclose(SPGra2Seq.compute_scale_factor(Config(), sk), vals.std(), rel_tol=1e-9)
    assert math.isclose(SPGra2Seq.compute_scale_factor(Config(scale_mode="train_dxdy"), sk),
                        S.scale_factor(sk), rel_tol=1e-9)
    raw = {"train": make_doodles(4, ["fish"], seed=0), "valid": make_doodles(4, ["house"], seed=1)}
    data = prepare_data(SPGra2Seq, Config(**TINY), raw)
    m = SPGra2Seq(data.config)
    m.setup_from_data(data)
    sig_v = all_column_std(SPGra2Seq.filter_sketches(Config(), raw["valid"]).points)
    assert math.isclose(m.split_scale["valid"], sig_v, rel_tol=1e-6)
    want = raw["valid"].points[:, :2] / sig_v
    assert np.allclose(data.splits["valid"].points[:, :2], want, rtol=1e-5)
    assert math.isclose(m.scale_factor, all_column_std(raw["train"].points), rel_tol=1e-6)
    data2 = prepare_data(SPGra2Seq, Config(**TINY, scale_mode="train_dxdy"), raw)
    SPGra2Seq(data2.config).setup_from_data(data2)
    assert np.allclose(data2.splits["valid"].points[:, :2], raw["valid"].points[:, :2] / data2.scale_factor)


# --------------------------------------------------------------------------------------------
# generation, checkpoints, command line
# --------------------------------------------------------------------------------------------


def test_generate_conditional_and_healing(doodles):
    m = build(doodles)
    m.scale_factor = doodles.scale_factor
    out = m.generate(references=doodles, seed=0)
    z = m.encode_references(doodles)
    assert len(out) == len(doodles) and np.allclose(out.z, z.numpy(), atol=1e-6)
    assert np.array_equal(out.category, doodles.category) and out.scale_factor == doodles.scale_factor
    assert all(len(s) <= m.config.max_seq_len for s in out)
    again = m.generate(references=doodles, seed=0)
    assert np.array_equal(again.points, out.points)
    healed = m.heal(doodles, strength=0.5, seed=0)              # heal's strength is mask_prob
    np.testing.assert_array_equal(m.generate(references=doodles, seed=0, mask_prob=0.5).points,
                                  healed.points)
    # healing decodes the corrupted code but carries the clean reference's mu (Ret gallery, 1.13)
    assert np.allclose(healed.z, out.z, atol=1e-6)
    corrupted = m.encode_references(doodles, 0.5, seed=0)
    assert not np.allclose(corrupted.numpy(), z.numpy())
    assert not np.array_equal(healed.points, out.points)
    # a reference longer than max_seq_len still encodes (the encoder reads only the images)
    long_ref = Sketches.from_list([np.tile(doodles[0], (3, 1))], scale_factor=doodles.scale_factor)
    assert len(long_ref[0]) > m.config.max_seq_len
    assert np.isfinite(m.encode_references(long_ref).numpy()).all()
    assert len(m.generate(3, references=doodles)) == 3
    codes = m.decode_codes(z[:2], seed=1)
    assert len(codes) == 2 and codes.z.shape == (2, 8)
    with pytest.raises(ConfigError, match="condition-on"):
        m.generate(4)
    with pytest.raises(ConfigError, match="temperature"):
        m.generate(references=doodles, temperature=0)


def test_centroids_round_trip_through_a_checkpoint(tmp_path, doodles):
    m = build(doodles)
    m.latent_mu.normal_()
    m.latent_ready.fill_(True)
    ckpt.save_weights(tmp_path / "w.safetensors", m, {"model": m.name})
    m2 = build(doodles)
    ckpt.load_weights(tmp_path / "w.safetensors", m2, m.name)
    assert torch.equal(m2.latent_mu, m.latent_mu) and bool(m2.latent_ready)


def test_demo_config_builds():
    c = demo_config()
    assert c.graph_picture_size == 64 and PatchGeometry(64).thickness == 4 and PatchGeometry(64).pad == 96
    SPGra2Seq(c)


def test_cli_train_and_sample(tmp_path):
    from sketchlab.cli import main

    run = tmp_path / "run"
    hp = ("graph_picture_size=16,cnn_channels=[4,8,8],dec_rnn_size=16,z_size=8,num_mixture=5,"
          "batch_size=8,max_valid_batches=1")
    assert main(["train", "sp-gra2seq", "--out", str(run), "--categories", "fish,house",
                 "--limit-per-category", "12", "--max-steps", "3", "--hparams", hp,
                 "--no-progress", "--device", "cpu"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "sp-gra2seq" and cfg["config"]["max_seq_len"] > 0
    log = (run / "log.csv").read_text().splitlines()[0].split(",")
    assert "occupied" in log and "valid_recon" in log
    assert main(["sample", str(run), "--out", str(tmp_path / "c.npz"), "--n", "4",
                 "--condition-on", "test", "--strength", "0.3", "--device", "cpu"]) == 0
    cond = Sketches.load(tmp_path / "c.npz")
    assert len(cond) == 4 and cond.z is not None and cond.category is not None
    assert (tmp_path / "c.png").is_file()
    assert main(["sample", str(run), "--out", str(tmp_path / "u.npz"), "--n", "2",
                 "--device", "cpu"]) == 2          # no prior: a clear error
    # the evaluation suite's hooks (Ret needs encode; samples come back in raw units)
    from sketchlab.runs import model_run_hooks

    hooks = model_run_hooks(run, device="cpu")
    refs = make_doodles(2, ["fish"], seed=5)
    codes = hooks.encode(refs)
    assert codes.shape == (2, 8) and np.isfinite(codes).all()
    # a generated sketch may be empty (the decoder ended at once): it still gets a code
    with_empty = Sketches.from_list([refs[0], np.zeros((0, 3), np.float32)])
    assert np.isfinite(hooks.encode(with_empty)).all()
    out = hooks.sample(refs)
    assert len(out) == 2 and out.scale_factor == 1.0


@pytest.mark.gpu
def test_render_on_cuda_matches_cpu(doodles):
    geom = PatchGeometry(64)
    plan = plan_batch([doodles[i] for i in range(4)], geom, 0.3, np.random.default_rng(0))
    cpu = render_nodes(plan, geom, "cpu")
    gpu = render_nodes(plan, geom, "cuda").cpu()
    assert torch.equal(cpu, gpu)
