import json

import numpy as np
import pytest

from sketchlab.data import synthetic as Y
from sketchlab.data.npz import load_npz
from sketchlab.data.sources import parse_categories
from sketchlab.data.strokes import to_absolute, validate_stroke3
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError


@pytest.fixture(scope="module")
def doodles():
    return Y.make_doodles_with_styles(150, seed=0)


def _same(a: Sketches, b: Sketches) -> bool:
    return (np.array_equal(a.points, b.points) and np.array_equal(a.offsets, b.offsets)
            and np.array_equal(a.category, b.category) and a.category_names == b.category_names)


def _of(sketches, style, category):
    """The sketches (as a list) and styles of one category."""
    idx = np.flatnonzero(sketches.category == sketches.category_names.index(category))
    return [sketches[int(i)] for i in idx], style[idx]


def test_categories_and_styles_are_declared():
    assert len(Y.CATEGORIES) >= 5
    for name in Y.CATEGORIES:
        assert 2 <= len(Y.STYLES[name]) <= 3


def test_deterministic_by_seed_and_stable_prefix():
    a = Y.make_doodles(12, seed=3)
    assert _same(a, Y.make_doodles(12, seed=3))
    assert not np.array_equal(a.points[:50], Y.make_doodles(12, seed=4).points[:50])
    # the first k doodles of a category do not depend on how many are asked for, nor on which
    # other categories are generated alongside
    small = Y.make_doodles(5, categories=["fish"], seed=3)
    fish = a.select(np.flatnonzero(a.category == a.category_names.index("fish"))[:5])
    assert np.array_equal(small.points, fish.points) and np.array_equal(small.offsets, fish.offsets)
    assert small.category_names == ("fish",) and set(small.category.tolist()) == {0}


def test_splits_are_disjoint_and_sized():
    splits = Y.make_doodle_splits(n_train=60, n_valid=15, n_test=15, seed=1)
    assert set(splits) == {"train", "valid", "test"}
    seen = {}
    for split, sk in splits.items():
        assert len(sk) == {"train": 60, "valid": 15, "test": 15}[split] * len(Y.CATEGORIES)
        for s in sk:
            key = s.tobytes()
            assert key not in seen, f"a {split} doodle also appears in {seen.get(key)}"
            seen[key] = split


def test_format_matches_quickdraw_sketchrnn_data(doodles):
    sketches, style = doodles
    assert sketches.scale_factor == 1.0 and sketches.points.dtype == np.float32
    assert len(style) == len(sketches)
    lengths = sketches.lengths
    assert lengths.min() >= 5 and lengths.max() < Y.MAX_POINTS
    assert 20 <= lengths.mean() <= 60  # QuickDraw's simplified house/sun/fish/cup/star: 26-48
    for i, s in enumerate(sketches):
        validate_stroke3(s, f"doodle {i}")
        assert np.array_equal(s, np.round(s)), "offsets must be integers"
        assert s[-1, 2] == 1, "the last point lifts the pen"
        a = to_absolute(s)[:, :2]
        # aligned to the top-left corner, longest side scaled to 255 (RDP may shave a pixel or two)
        assert a.min() >= 0 and a.max() <= 255
        assert a.min(0).max() <= 2 and a.max() >= 250
    # the writer's int16 cast is lossless
    assert np.abs(sketches.points).max() <= 255


def test_rdp_has_been_applied(doodles):
    """Consecutive points of a stroke are never closer than what RDP(2) on integer data keeps,
    apart from dots and stroke ends, and interior points that lie within 2 px of the chord
    through their neighbours are rare (RDP keeps only farthest points)."""
    sketches, _ = doodles
    interior_close = 0
    interior_total = 0
    for s in list(sketches)[:200]:
        a = to_absolute(s)
        for stroke in np.split(a[:, :2], np.nonzero(a[:, 2])[0][:-1] + 1):
            if len(stroke) < 3:
                continue
            p0, p1, p2 = stroke[:-2], stroke[1:-1], stroke[2:]
            d = p2 - p0
            norm = np.hypot(d[:, 0], d[:, 1])
            ok = norm > 0
            dist = np.abs(d[ok, 0] * (p0[ok, 1] - p1[ok, 1]) - d[ok, 1] * (p0[ok, 0] - p1[ok, 0])) / norm[ok]
            interior_close += int((dist <= 2.0).sum())
            interior_total += int(ok.sum())
    # without RDP (points every ~5 px along smooth strokes) nearly all would be within 2 px
    assert interior_close / interior_total < 0.35


def test_styles_are_visibly_different(doodles):
    sketches, style = doodles

    # fish: the body's mass (eye, gill, fin, round head) sits towards the side it faces
    fish, fs = _of(sketches, style, "fish")

    def facing(s):
        a = to_absolute(s)[:, :2]
        lo, hi = a.min(0), a.max(0)
        return (a[:, 0].mean() - (lo[0] + hi[0]) / 2) / (hi[0] - lo[0])

    left, right = Y.STYLES["fish"].index("left"), Y.STYLES["fish"].index("right")
    f = np.array([facing(s) for s in fish])
    assert np.mean(f[fs == left] < 0) > 0.95 and np.mean(f[fs == right] > 0) > 0.95

    # sun: many separate rays, a face (circle, two eyes, a mouth), or one ring around the circle
    sun, ss = _of(sketches, style, "sun")
    n_strokes = np.array([int(s[:, 2].sum()) for s in sun])
    assert n_strokes[ss == Y.STYLES["sun"].index("rays")].min() >= 8
    assert set(n_strokes[ss == Y.STYLES["sun"].index("face")]) == {4}
    assert set(n_strokes[ss == Y.STYLES["sun"].index("zigzag")]) == {2}

    # house: door and windows, or a chimney, add strokes and points to the plain outline
    house, hs = _of(sketches, style, "house")
    pts = np.array([len(s) for s in house])
    plain, door, chimney = (pts[hs == Y.STYLES["house"].index(k)].mean()
                            for k in ("plain", "door_window", "chimney"))
    assert door > 1.8 * plain and chimney > 1.3 * plain

    # cup: a tall glass, a mug with its handle, a wide teacup on a saucer
    cup, cs = _of(sketches, style, "cup")

    def aspect(s):
        e = np.ptp(to_absolute(s)[:, :2], axis=0)
        return e[0] / e[1]

    asp = np.array([aspect(s) for s in cup])
    glass, mug, teacup = (np.median(asp[cs == Y.STYLES["cup"].index(k)]) for k in ("glass", "mug", "teacup"))
    assert glass < 0.7 < mug < 1.2 < teacup

    # star: a six-pointed star is two triangles; a pentagram's lines cross five times, an
    # outline's (nearly) never
    star, ts = _of(sketches, style, "star")
    n_strokes = np.array([int(s[:, 2].sum()) for s in star])
    assert set(n_strokes[ts == Y.STYLES["star"].index("six")]) == {2}
    crossings = np.array([_crossings(s) for s in star])
    assert crossings[ts == Y.STYLES["star"].index("five")].min() >= 5
    assert np.mean(crossings[ts == Y.STYLES["star"].index("outline")] <= 2) > 0.9


def _crossings(sketch) -> int:
    """How many pairs of non-adjacent drawn segments properly intersect."""
    a = to_absolute(sketch)[:, :2].astype(np.float64)
    drawn = np.nonzero(sketch[:-1, 2] == 0)[0]  # segment i -> i+1 is drawn unless the pen lifts
    p, q = a[drawn], a[drawn + 1]

    def side(a0, a1, b):  # sign of the turn a0 -> a1 -> b, for all pairs
        return np.sign((b[None, :, 1] - a0[:, None, 1]) * (a1[:, None, 0] - a0[:, None, 0])
                       - (a1[:, None, 1] - a0[:, None, 1]) * (b[None, :, 0] - a0[:, None, 0]))

    cross = (side(p, q, p) * side(p, q, q) < 0) & (side(p, q, p).T * side(p, q, q).T < 0)
    return int(np.triu(cross, 2).sum())


def test_style_names(doodles):
    sketches, style = doodles
    names = Y.style_names(sketches.select(np.arange(3)), style[:3])
    assert all(n.startswith("house/") for n in names)
    assert all(n.split("/")[1] in Y.STYLES["house"] for n in names)


def test_bad_arguments_are_clear():
    with pytest.raises(ConfigError, match="unknown doodle categories"):
        Y.make_doodles(2, categories=["house", "dragon"])
    with pytest.raises(ConfigError, match="split"):
        Y.make_doodles(2, split="training")
    with pytest.raises(ConfigError):
        Y.make_doodles(0)
    with pytest.raises(ConfigError, match="parse_categories"):
        Y.make_doodles(2, categories="sun,star")
    assert Y.make_doodles(2, categories=parse_categories("sun,star")).category_names == ("sun",
                                                                                         "star")


def test_write_npz_dataset_in_sketchrnn_layout(tmp_path):
    paths = Y.write_npz_dataset(tmp_path, n_per_category=20, seed=5, categories=["house", "fish"])
    assert [p.name for p in paths] == ["house.npz", "fish.npz"]
    styles = json.loads((tmp_path / "styles.json").read_text())
    for path in paths:
        name = path.stem
        # allow_pickle only because this test wrote the file itself a moment ago; user files go
        # through sketchlab.data.npz.load_npz
        with np.load(path, allow_pickle=True) as f:
            assert sorted(f.files) == ["test", "train", "valid"]
            data = {k: f[k] for k in f.files}
        assert {k: len(v) for k, v in data.items()} == {"train": 20, "valid": 2, "test": 2}
        for split, column in data.items():
            assert column.dtype == object
            expected, expected_style = Y.make_doodles_with_styles(len(column), [name], 5, split)
            for s, e in zip(column, expected):
                assert s.dtype == np.int16 and s.shape[1] == 3
                assert np.array_equal(s.astype(np.float32), e)
            assert styles[name][split] == expected_style.tolist()
        assert styles[name]["styles"] == list(Y.STYLES[name])


def test_written_npz_reads_through_the_safe_loader(tmp_path):
    (path,) = Y.write_npz_dataset(tmp_path, n_per_category=10, seed=2, categories=["star"])
    loaded = load_npz(path)
    expected = Y.make_doodles(10, ["star"], 2, "train")
    assert np.array_equal(loaded["train"].points, expected.points)
    assert np.array_equal(loaded["train"].offsets, expected.offsets)


def test_partial_sheep_grow_one_part_at_a_time():
    """The demo's partial sheep: each drawing is the previous one plus strokes (a head, then two
    legs), valid stroke-3 of aaron_sheep's size, points about 4 apart."""
    sheep = Y.partial_sheep()
    assert len(sheep) == len(Y.PARTIAL_SHEEP) == 3
    drawings = [validate_stroke3(s, "partial sheep") for s in sheep]
    assert [int((d[:, 2] > 0).sum()) for d in drawings] == [1, 2, 4]
    for shorter, longer in zip(drawings, drawings[1:]):
        assert np.array_equal(longer[:len(shorter)], shorter)
    xy = to_absolute(drawings[-1])[:, :2]
    width, height = xy.max(0) - xy.min(0)
    assert 120 < width < 200 and 60 < height < 110
    steps = np.hypot(*drawings[0][1:, :2].T)
    assert np.all(steps < 4.5) and np.median(steps) > 3.5


def test_partial_sheep_fit_a_short_model():
    """A model that takes fewer points gets sparser partial sheep of the same shape."""
    short = Y.partial_sheep(max_points=30)
    assert max(short.lengths) <= 30
    assert [int((s[:, 2] > 0).sum()) for s in short] == [1, 2, 4]
