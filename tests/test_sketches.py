"""The Sketches container: construction, selection, units, files, strokes and ndjson."""

import gzip
import json

import numpy as np
import pytest

from sketchlab.data.ndjson import drawing_to_stroke3
from sketchlab.data.sketches import Sketches
from sketchlab.errors import DataError

SQUARE = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [-10, 0, 0], [0, -10, 1],
                   [20, 5, 0], [3, 0, 1]], np.float32)

# Two strokes in absolute coordinates, as QuickDraw's simplified ndjson stores them, and the
# stroke-3 rows they make: the first offset is the first point's position, a pen lift (1) ends
# each stroke, the second stroke starts 30 right and 10 down of where the first ended.
DRAWING = [[[10, 20, 20], [0, 0, 30]], [[50, 60], [40, 40]]]
DRAWING_ROWS = [[10, 0, 0], [10, 0, 0], [0, 30, 1], [30, 10, 0], [10, 0, 1]]
DOT = [[[0, 5], [1, 2]]]


def test_sketches_roundtrip(tmp_path):
    sk = Sketches.from_list([SQUARE, SQUARE[:3]], category=np.array([1, 0]),
                              category_names=("cat", "dog"), scale_factor=2.5)
    sk.z = np.ones((2, 4), np.float32)
    assert len(sk) == 2 and sk.lengths.tolist() == [7, 3]
    assert np.allclose(sk[1], SQUARE[:3])
    sub = sk[[1]]
    assert len(sub) == 1 and sub.category.tolist() == [0] and sub.z.shape == (1, 4)
    path = tmp_path / "s.npz"
    sk.save(path)
    with np.load(path, allow_pickle=False) as f:   # pickle-free on disk
        assert "points" in f.files
    back = Sketches.load(path)
    assert back.category_names == ("cat", "dog") and back.scale_factor == 2.5
    assert np.allclose(back.points, sk.points) and back.category.tolist() == [1, 0]
    both = Sketches.concat([sk, Sketches.from_list([SQUARE], category=0, category_names=("dog",),
                                                        scale_factor=2.5)])
    assert both.category.tolist() == [1, 0, 1]   # 'dog' remapped onto the union


def test_sketches_load_rejects_garbage(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz"):
        Sketches.load(p)


def test_in_units_converts_between_raw_and_normalised():
    raw = Sketches.from_list([np.array([[4.0, -2.0, 0], [6.0, 8.0, 1]], np.float32)],
                               category=0, category_names=("cat",))
    norm = raw.in_units(2.0)
    np.testing.assert_allclose(norm.points, [[2.0, -1.0, 0], [3.0, 4.0, 1]])
    assert norm.scale_factor == 2.0 and norm.category_names == ("cat",)
    back = norm.in_units(4.0).in_units(1.0)  # via other units, back to raw
    np.testing.assert_allclose(back.points, raw.points)
    assert back.scale_factor == 1.0 and raw.points[0, 0] == 4.0  # the source is untouched


def test_an_empty_selection_keeps_codes_and_labels():
    s = Sketches.from_list([np.zeros((0, 3), np.float32), np.ones((2, 3), np.float32)])
    s.z, s.component = np.arange(8, dtype=np.float32).reshape(2, 4), np.array([3, 1])
    none = s.select([])
    assert len(none) == 0 and none.z.shape == (0, 4) and none.component.shape == (0,)
    from sketchlab.models.base import clip_and_limit
    kept = clip_and_limit(s, 0)  # drops the empty sketch, keeps the other's code
    assert len(kept) == 1 and kept.z.tolist() == [[4, 5, 6, 7]]
    assert len(clip_and_limit(s.select([0]), 0)) == 0


# ---- strokes ---------------------------------------------------------------------------------


def test_from_strokes_one_sketch_and_back():
    sk = Sketches.from_strokes(DRAWING)
    assert len(sk) == 1 and sk.points.tolist() == DRAWING_ROWS
    assert sk.points.dtype == np.float32 and sk.scale_factor == 1.0 and sk.category is None
    assert sk.to_strokes() == [DRAWING]
    back = sk.to_strokes()[0][0][0]
    assert all(type(v) is int for v in back)  # whole numbers come back as ints


def test_from_strokes_a_list_of_sketches_with_categories():
    sk = Sketches.from_strokes([DRAWING, DOT, (np.array([[3.0, 4.0], [5.0, 6.0]]),)],
                               category=["dog", "cat", "dog"])
    assert sk.lengths.tolist() == [5, 2, 2]
    assert sk[1].tolist() == [[0, 1, 0], [5, 1, 1]]
    assert sk[2].tolist() == [[3, 5, 0], [1, 1, 1]]
    assert sk.category_names == ("dog", "cat") and sk.category.tolist() == [0, 1, 0]
    assert sk.to_strokes() == [DRAWING, DOT, [[[3, 4], [5, 6]]]]
    one = Sketches.from_strokes([DRAWING, DOT], category="cat")
    assert one.category_names == ("cat",) and one.category.tolist() == [0, 0]


def test_to_strokes_gives_floats_and_raw_units():
    halves = [[[0.5, 1.25, -2.0], [2.75, -3.5, 0.0]]]
    sk = Sketches.from_strokes(halves)
    assert sk.points.tolist() == [[0.5, 2.75, 0], [0.75, -6.25, 0], [-3.25, 3.5, 1]]
    assert sk.to_strokes() == [halves]
    assert Sketches.from_strokes([[[0.1, 0.3], [0.2, 0.7]]]).to_strokes() == [
        [[[0.1, 0.3], [0.2, 0.7]]]]  # float32's shortest spelling, not 0.10000000149011612
    # Normalised sketches come back in raw units: offsets 2.5, 0, 0 ... times the factor 4.
    normalised = Sketches.from_strokes(DRAWING).in_units(4.0)
    assert normalised.points[0].tolist() == [2.5, 0, 0]
    assert normalised.to_strokes() == [DRAWING]


@pytest.mark.parametrize("strokes, message", [
    ([DRAWING, [[[1, 2, 3], [1, 2]]]], r"sketch 1: xs/ys lengths differ \(stroke 0: 3 xs, 2 ys\)"),
    ([DRAWING, DOT, [[[1, float("nan")], [1, 2]]]], r"sketch 2: NaN or inf coordinates"),
    ([[[1, 2], [3, 4]], [[1, "x"], [3, 4]]], r"sketch 0: non-numeric coordinates \(stroke 1\)"),
    ([DRAWING, [[[], []]]], r"sketch 1: empty drawing \(every stroke is empty\)"),
    ([DRAWING, [[[1, 2], [3, 4], [0, 1]]]], r"sketch 1: malformed stroke \(stroke 0: expected "
                                            r"\[xs, ys\], got 3 lists\)"),
    ([[[1, 2], [3, 4]], [5]], r"sketch 0: malformed stroke \(stroke 1"),
    ([[[1e39], [0]]], r"sketch 0: coordinates beyond float32"),
    ([], r"no points given"),
    ([[], [[[], []]]], r"no points given"),
    ([[1, 2], [3, 4]], r"nested 2 deep.*wrap it in a list"),
    ([[[[[1]]]]], r"nested 5 deep"),
])
def test_bad_strokes_name_the_problem_and_the_sketch(strokes, message):
    with pytest.raises(DataError, match=message):
        Sketches.from_strokes(strokes)


def test_from_strokes_category_must_match():
    with pytest.raises(DataError, match=r"category: expected one name or 2 names"):
        Sketches.from_strokes([DRAWING, DOT], category=["cat"])
    with pytest.raises(DataError, match=r"category"):
        Sketches.from_strokes([DRAWING, DOT], category=[1, 2])


def test_to_strokes_refuses_nan():
    with pytest.raises(DataError, match="NaN"):
        Sketches.from_list([np.array([[np.nan, 0, 1]])]).to_strokes()


# ---- QuickDraw ndjson ------------------------------------------------------------------------


NDJSON = ('{"word":"cat","drawing":[[[10,20,20],[0,0,30]],[[50,60],[40,40]]]}\n'
          '{"word":"dog","drawing":[[[0,5],[1,2]]]}\n'
          '{"word":"cat","drawing":[[[0,5],[1,2]]]}\n')


def test_ndjson_round_trip_is_byte_identical(tmp_path):
    (tmp_path / "in.ndjson").write_text(NDJSON)
    sk = Sketches.from_ndjson(tmp_path / "in.ndjson")
    assert sk.lengths.tolist() == [5, 2, 2] and sk[0].tolist() == DRAWING_ROWS
    assert sk.category_names == ("cat", "dog") and sk.category.tolist() == [0, 1, 0]
    sk.to_ndjson(tmp_path / "out.ndjson")
    assert (tmp_path / "out.ndjson").read_text() == NDJSON
    # gzip both ways, and lines from memory (str or bytes; blank lines skipped)
    sk.to_ndjson(tmp_path / "out.ndjson.gz")
    assert gzip.decompress((tmp_path / "out.ndjson.gz").read_bytes()).decode() == NDJSON
    again = Sketches.from_ndjson(str(tmp_path / "out.ndjson.gz"))
    assert np.array_equal(again.points, sk.points) and again.category_names == ("cat", "dog")
    lines = Sketches.from_ndjson(["", *NDJSON.encode().splitlines(), "  "])
    assert np.array_equal(lines.offsets, sk.offsets)


def test_ndjson_without_words_and_with_other_fields(tmp_path):
    plain = Sketches.from_ndjson(['{"key_id": "7", "countrycode": "DE", '
                                  '"drawing": [[[0,5],[1,2]]]}'])
    assert plain.category is None and plain[0].tolist() == [[0, 1, 0], [5, 1, 1]]
    plain.to_ndjson(tmp_path / "p.ndjson")
    assert (tmp_path / "p.ndjson").read_text() == '{"drawing":[[[0,5],[1,2]]]}\n'
    # normalised sketches are written in raw units
    Sketches.from_ndjson(NDJSON.splitlines()).in_units(0.5).to_ndjson(tmp_path / "n.ndjson")
    assert (tmp_path / "n.ndjson").read_text() == NDJSON


@pytest.mark.parametrize("lines, message", [
    (['{"word":"cat","drawing":[[[1,2],[3,4]]]}', "{oops"], r"ndjson line:2: invalid JSON"),
    (['{"word":"cat"}'], r"ndjson line:1: no \"drawing\" field"),
    (['{"word":3,"drawing":[]}'], r"\"word\" must be a string"),
    (['{"word":"cat","drawing":[[[1,2],[3,4]]]}', '{"drawing":[[[1,2],[3,4]]]}'],
     r"ndjson line:2: no \"word\" while other lines have one"),
    (['', '{"word":"cat","drawing":[[[1,2],[3,4]]]}', '',
      '{"word":"cat","drawing":[[[1,2,3],[3,4]]]}'],
     r"ndjson line:4 \(sketch 1\): xs/ys lengths differ"),
    (['{"word":"cat","drawing":[[[1,NaN],[3,4]]]}'], r"line:1 \(sketch 0\): NaN or inf"),
    (['{"word":"cat","drawing":[[[1,2],[3,4],[0,9]]]}'], r"got 3 lists\); raw or SPG ndjson"),
    (["", " "], r"ndjson line: no drawings"),
])
def test_bad_ndjson_names_the_line_and_the_sketch(lines, message):
    with pytest.raises(DataError, match=message):
        Sketches.from_ndjson(lines)


def test_from_ndjson_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.ndjson: cannot read"):
        Sketches.from_ndjson(tmp_path / "nope.ndjson")
    (tmp_path / "bad.ndjson").write_text('{"word":"cat","drawing":[[[1],[1,2]]]}\n')
    with pytest.raises(DataError, match=r"bad\.ndjson:1 \(sketch 0\): xs/ys"):
        Sketches.from_ndjson(tmp_path / "bad.ndjson")


@pytest.mark.realdata
def test_real_simplified_ndjson_round_trip_agrees_with_the_importer(shared_data, tmp_path):
    path = shared_data / "quickdraw-simplified" / "cat.ndjson"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    sk = Sketches.from_ndjson(path)
    assert len(sk) == len(records) == 25 and sk.category_names == ("cat",)
    for i, record in enumerate(records):  # the same stroke-3 rows `sketchlab data import` writes
        assert np.array_equal(sk[i], drawing_to_stroke3(record["drawing"], "simplified"))
    sk.to_ndjson(tmp_path / "cat.ndjson")
    written = [json.loads(line) for line in (tmp_path / "cat.ndjson").read_text().splitlines()]
    assert written == [{"word": r["word"], "drawing": r["drawing"]} for r in records]


# ---- repr ------------------------------------------------------------------------------------


def test_repr_summarises():
    sk = Sketches.from_strokes([DRAWING, DOT, DOT], category=["cat", "dog", "cat"])
    assert repr(sk) == "Sketches(3 sketches; 9 points; categories: cat 2, dog 1; units: raw)"
    sk.z = np.zeros((3, 8), np.float32)
    assert repr(sk.in_units(12.5)) == ("Sketches(3 sketches; 9 points; categories: cat 2, dog 1; "
                                       "units: raw / 12.5 (normalised); z 8-d)")
    assert repr(Sketches.from_list([])) == "Sketches(0 sketches; 0 points; units: raw)"
    many = Sketches.from_strokes([DOT] * 8, category=[f"c{i}" for i in range(8)])
    assert "c0 1, c1 1, c2 1, c3 1, c4 1, c5 1, ... (8 categories)" in repr(many)


def test_a_sketch_without_points_round_trips_as_an_empty_drawing(tmp_path):
    # a model may stop at once; what to_strokes/to_ndjson write must read back
    sk = Sketches.from_list([np.zeros((0, 3), np.float32), np.array([[3, 4, 1]], np.float32)])
    assert sk.to_strokes()[0] == []
    back = Sketches.from_strokes(sk.to_strokes())
    assert back.lengths.tolist() == [0, 1]
    sk.to_ndjson(tmp_path / "e.ndjson")
    assert Sketches.from_ndjson(tmp_path / "e.ndjson").lengths.tolist() == [0, 1]
