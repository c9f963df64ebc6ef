import numpy as np
import pytest

from sketchlab.data import strokes as S
from sketchlab.errors import DataError

SQUARE = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [-10, 0, 0], [0, -10, 1],
                   [20, 5, 0], [3, 0, 1]], np.float32)


def test_absolute_roundtrip_and_polylines():
    a = S.to_absolute(SQUARE)
    assert a[4, :2].tolist() == [0, 0]
    assert np.allclose(S.to_offsets(a), SQUARE)
    lines = S.to_polylines(SQUARE)
    assert [len(l) for l in lines] == [5, 2]
    assert lines[1].tolist() == [[20, 5], [23, 5]]
    assert np.allclose(S.from_polylines(lines), SQUARE)


def test_stroke_ids_end_a_stroke_at_each_pen_lift():
    assert S.stroke_ids(SQUARE[:, 2]).tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert S.stroke_ids(np.array([1.0, 1.0, 0.0])).tolist() == [0, 1, 2]
    assert S.stroke_ids(np.zeros(0)).tolist() == []


def test_parse_drawing_reads_quickdraw_strokes():
    lines = S.parse_drawing([[[10, 20, 20], [0, 0, 30]], [[], []], [[50], [40]]])
    assert [l.tolist() for l in lines] == [[[10, 0], [20, 0], [20, 30]], [[50, 40]]]
    assert lines[0].dtype == np.float64
    # arrays and tuples are strokes too; raw ndjson's third list only with extra_lists
    assert S.parse_drawing([np.array([[1, 2], [3, 4]])])[0].tolist() == [[1, 3], [2, 4]]
    raw = [([1, 2], [3, 4], [0, 16])]
    assert S.parse_drawing(raw, extra_lists=True)[0].tolist() == [[1, 3], [2, 4]]
    with pytest.raises(S.BadDrawing, match=r"malformed stroke \(stroke 0: expected \[xs, ys\], "
                                           r"got 3 lists\)") as err:
        S.parse_drawing(raw)
    assert err.value.reason == "malformed stroke" and isinstance(err.value, DataError)


@pytest.mark.parametrize("drawing, message", [
    ([], r"empty drawing \(no strokes\)"),
    ({"a": 1}, r"empty drawing \(a dict, not a list of strokes\)"),
    ([[[], []]], r"empty drawing \(every stroke is empty\)"),
    ([[[1], [1]], 5], r"malformed stroke \(stroke 1: expected \[xs, ys\], got int\)"),
    ([[[1], [1]], [[1, 2], 3]], r"malformed stroke \(stroke 1: xs and ys must be lists"),
    ([[[1], [1]], [[1, 2], [3]]], r"xs/ys lengths differ \(stroke 1: 2 xs, 1 ys\)"),
    ([[[1, "a"], [1, 2]]], r"non-numeric coordinates \(stroke 0\)"),
    ([[[None], [1]]], r"NaN or inf coordinates \(stroke 0\)"),   # numpy reads None as NaN
    ([[[[1, 2]], [[3, 4]]]], r"non-numeric coordinates \(stroke 0: nested lists\)"),
    ([[[], []], [[1, 2], [1, 2]], [[1, float("nan")], [1, 2]]],
     r"NaN or inf coordinates \(stroke 2\)"),
    ([[[float("inf")], [1]]], r"NaN or inf"),
])
def test_parse_drawing_names_the_problem_and_the_stroke(drawing, message):
    with pytest.raises(S.BadDrawing, match=message):
        S.parse_drawing(drawing)


def test_stroke5_padding_matches_seed_layout():
    batch = S.pad_batch([SQUARE], max_len=9)
    assert batch.shape == (1, 10, 5)
    assert batch[0, 0].tolist() == [0, 0, 1, 0, 0]                  # S0
    assert batch[0, 1].tolist() == [0, 0, 1, 0, 0]                  # first point, pen down
    assert batch[0, 5].tolist() == [0, -10, 0, 1, 0]                # pen lifted after point 4
    assert batch[0, 7].tolist() == [3, 0, 0, 1, 0]                  # last point keeps p2
    assert batch[0, 8].tolist() == [0, 0, 0, 0, 1]                  # padding
    back = S.stroke5_to_stroke3(batch[0, 1:])
    assert np.allclose(back, SQUARE)
    with pytest.raises(DataError):
        S.to_stroke5(SQUARE, 3)


def test_bounds_include_origin():
    s = np.array([[5, 5, 0], [5, 0, 1]], np.float32)
    assert S.bounds(s) == (0.0, 10.0, 0.0, 5.0)


def test_rdp_hand_case():
    # a straight line collapses to its endpoints
    straight = np.stack([np.arange(50), 2 * np.arange(50)], 1).astype(np.float32)
    assert S.rdp(straight, 0.5).tolist() == [[0, 0], [49, 98]]


def test_rdp_exact_points():
    # distances to the chord (0,0)-(10,0): 3 (kept, > 2) then 1 and 1 (dropped)
    line = np.array([[0, 0], [2, 1], [5, 3], [8, 1], [10, 0]], np.float32)
    assert S.rdp(line, 2.0).tolist() == [[0, 0], [5, 3], [10, 0]]


def test_scale_factor_is_pooled_population_std():
    a = np.array([[1, 2, 0], [3, 4, 1]], np.float32)
    b = np.array([[5, 6, 1]], np.float32)
    vals = np.array([1, 2, 3, 4, 5, 6], np.float64)
    assert S.scale_factor([a, b]) == pytest.approx(vals.std())
    with pytest.raises(DataError):
        S.scale_factor([])


def test_augment_strokes_preserves_absolute_positions(rng):
    line = np.zeros((40, 3), np.float32)
    line[:, 0] = 1
    line[:, 1] = np.arange(40) % 3
    line[19, 2] = 1
    line[-1, 2] = 1
    out = S.augment_strokes(line, 0.5, rng)
    assert len(out) < len(line)
    # the absolute position of every pen-lift point is unchanged
    a, b = S.to_absolute(line), S.to_absolute(out)
    assert np.allclose(a[a[:, 2] == 1, :2], b[b[:, 2] == 1, :2])
    assert np.allclose(a[-1], b[-1])
    # the first three points of a stroke are never dropped
    assert np.allclose(out[:3], line[:3])
    assert np.allclose(S.augment_strokes(line, 0.0, rng), line)


def test_vectorised_augment_strokes_equals_the_seeds_loop():
    """Same kept points, same merged offsets, same random draws consumed, on random sketches
    with dots, long strokes and pen lifts everywhere."""
    gen = np.random.default_rng(0)
    for trial in range(300):
        n = int(gen.integers(1, 60))
        sk = np.zeros((n, 3), np.float32)
        sk[:, :2] = gen.normal(size=(n, 2)).astype(np.float32) * 10
        sk[:, 2] = gen.random(n) < gen.choice([0.05, 0.2, 0.6])
        prob = float(gen.choice([0.1, 0.5, 0.9]))
        a_rng, b_rng = np.random.default_rng(trial), np.random.default_rng(trial)
        fast = S.augment_strokes(sk, prob, a_rng)
        slow = S.augment_strokes_reference(sk, prob, b_rng)
        assert fast.shape == slow.shape and np.array_equal(fast[:, 2], slow[:, 2])
        np.testing.assert_allclose(fast[:, :2], slow[:, :2], rtol=1e-5, atol=1e-4)
        assert a_rng.random() == b_rng.random()      # the same number of draws


def test_random_scale_range(rng):
    s = np.ones((5, 3), np.float32)
    s[:, 2] = 0
    out = S.random_scale(s, 0.1, rng)
    assert np.all((out[:, :2] >= 0.9) & (out[:, :2] <= 1.1))
    assert np.all(out[:, 0] == out[0, 0]) and np.all(out[:, 1] == out[0, 1])


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((0, 3)), "empty"),
    (np.array([[np.nan, 0, 1]]), "NaN"),
    (np.zeros((5, 2)), "shape"),
    (np.array([[0, 0, 2]]), "pen"),
])
def test_validate_stroke3(bad, msg):
    with pytest.raises(DataError, match=msg):
        S.validate_stroke3(bad, "x.npz[train][3]")
    with pytest.raises(DataError, match="longer"):
        S.validate_stroke3(np.zeros((10, 3)), "x", max_len=5)
