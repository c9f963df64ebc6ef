"""The batched RDP (`rdp_mask`, `rdp_many`) must make exactly the plain `rdp`'s choices."""

import numpy as np

from sketchlab.data import strokes as S


def _random_polylines(rng, count):
    lines = []
    for _ in range(count):
        n = int(rng.integers(0, 120))
        kind = rng.integers(3)
        if kind == 0:    # integer random walk: many exact ties and distances equal to epsilon
            line = np.cumsum(rng.integers(-3, 4, size=(n, 2)), 0)
        elif kind == 1:  # smooth curve, rounded like QuickDraw coordinates
            t = np.linspace(0, rng.uniform(1, 7), n)
            line = np.round(np.stack([100 * np.cos(t) + 3 * t * t, 80 * np.sin(t)], 1))
        else:            # repeated points: degenerate (zero-length) segments
            line = np.repeat(rng.integers(0, 5, size=(max(n // 4, 0), 2)), 4, axis=0)
        lines.append(line.astype(np.float32))
    return lines


def test_rdp_many_matches_plain_rdp(rng):
    lines = _random_polylines(rng, 300)
    for eps in (0.5, 2.0, 5.0):
        fast = S.rdp_many(lines, eps)
        assert len(fast) == len(lines)
        for line, got in zip(lines, fast):
            assert np.array_equal(got, S.rdp(line, eps)), (line, eps)


def test_rdp_mask_hand_case():
    # the two polylines of test_strokes' hand cases, back to back
    line = np.array([[0, 0], [2, 1], [5, 3], [8, 1], [10, 0]], np.float32)
    straight = np.stack([np.arange(5), 2 * np.arange(5)], 1).astype(np.float32)
    keep = S.rdp_mask(np.concatenate([line, straight]), [0, 5, 10], 2.0)
    assert keep.tolist() == [True, False, True, False, True, True, False, False, False, True]
    assert S.rdp_many([], 2.0) == []
