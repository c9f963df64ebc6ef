"""QuickDraw data I/O: safe npz reading, writing, ndjson import, download, info, dataset loading."""

import hashlib
import io
import json
import os
import pickle
import pickletools
import threading
import urllib.parse
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from sketchlab import cli
from sketchlab.data import quickdraw as qd
from sketchlab.data import strokes as S
from sketchlab.errors import ConfigError, DataError

SK_A = np.array([[5, 3, 0], [10, 0, 0], [0, 10, 1], [-4, 2, 0], [3, 3, 1]], np.int16)
SK_B = np.array([[1, 1, 0], [2, -1, 1]], np.int16)
SK_C = np.array([[0, 0, 0], [7, 7, 0], [1, -7, 0], [2, 2, 1]], np.int16)


def _npz_with_members(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name + ".npy", data)
    return path


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _object_array(items):
    out = np.empty(len(items), dtype=object)
    for i, a in enumerate(items):
        out[i] = a
    return out


def _standard_npz(path, **splits):
    return _npz_with_members(path, {k: _npy(_object_array(v)) for k, v in splits.items()})


# ============================================================================================
# Reading and writing sketch-rnn npz
# ============================================================================================


def test_save_and_load_roundtrip_and_original_tools_can_read_it(tmp_path):
    path = tmp_path / "cat.npz"
    qd.save_sketchrnn_npz(path, {"train": [SK_A, SK_B], "valid": [SK_C], "test": [SK_B]},
                          extra={"train_key_ids": np.array(["k1", "k2"])})
    data = qd.load_npz(path)
    assert [len(data[s]) for s in qd.SPLITS] == [2, 1, 1]
    assert np.array_equal(data["train"][0], SK_A) and np.array_equal(data["train"][1], SK_B)
    assert data["train"].points.dtype == np.float32 and data["train"].scale_factor == 1.0
    assert qd.read_npz_array(path, "train_key_ids").tolist() == ["k1", "k2"]
    # The original repos read it with np.load(allow_pickle=True): int16 object arrays.
    with np.load(path, allow_pickle=True, encoding="latin1") as f:
        assert f["train"].dtype == object and f["train"].shape == (2,)
        assert f["train"][0].dtype == np.int16 and np.array_equal(f["train"][0], SK_A)
    # ... and numpy 1.x can resolve the globals it names (numpy.core, never numpy._core).
    with zipfile.ZipFile(path) as zf:
        raw = zf.read("train.npy")
    globals_ = [arg for op, arg, _ in pickletools.genops(raw[raw.index(b"\n") + 1:])
                if op.name == "GLOBAL"]
    assert "numpy.core.multiarray _reconstruct" in globals_
    assert not any("_core" in g for g in globals_)


def test_equal_length_sketches_are_still_saved_as_an_object_array(tmp_path):
    path = tmp_path / "same.npz"
    qd.save_sketchrnn_npz(path, {"train": [SK_B, SK_B + 1 - np.array([0, 0, 1], np.int16)]})
    with np.load(path, allow_pickle=True) as f:
        assert f["train"].shape == (2,)


def _scaled_xy(sketch, factor):
    out = sketch.astype(np.float64)
    out[:, :2] *= factor
    return out


def test_save_refuses_what_int16_cannot_hold(tmp_path):
    with pytest.raises(DataError, match="not integers"):
        qd.save_sketchrnn_npz(tmp_path / "x.npz", {"train": [_scaled_xy(SK_A, 0.5)]})
    with pytest.raises(DataError, match="range"):
        qd.save_sketchrnn_npz(tmp_path / "x.npz", {"train": [_scaled_xy(SK_A, 10000)]})
    with pytest.raises(DataError, match="pen column"):
        qd.save_sketchrnn_npz(tmp_path / "x.npz", {"train": [SK_A * 2]})
    with pytest.raises(DataError, match=r"sketch 1"):
        qd.save_sketchrnn_npz(tmp_path / "x.npz", {"train": [SK_A, np.zeros((0, 3))]})
    qd.save_sketchrnn_npz(tmp_path / "f.npz", {"train": [_scaled_xy(SK_A, 0.5)]}, dtype=np.float32)
    assert np.allclose(qd.load_npz_split(tmp_path / "f.npz", "train")[0], _scaled_xy(SK_A, 0.5))
    assert not (tmp_path / "x.npz").exists()


def test_reads_python2_and_protocol2_pickles(tmp_path):
    # Python 3 protocol-2 pickles wrap bytes in _codecs.encode(..., 'latin1'): allowed, checked.
    arr = _object_array([SK_A, SK_C])
    raw = _npy(arr)
    payload = pickle.dumps(arr, protocol=2)
    assert b"_codecs" in payload
    path = _npz_with_members(tmp_path / "p2.npz", {"train": raw[:raw.index(b"\n") + 1] + payload})
    assert np.array_equal(qd.load_npz_split(path, "train")[1], SK_C)


def test_float_and_block_layouts_load(tmp_path):
    path = _npz_with_members(tmp_path / "b.npz", {
        "train": _npy(np.stack([SK_B, SK_B]).astype(np.float64)),  # one numeric (N, n, 3) block
        "valid": _npy(_object_array([SK_A.astype(np.float32)])),
        "test": _npy(_object_array([SK_C.astype(np.int32)]))})
    data = qd.load_npz(path)
    assert len(data["train"]) == 2 and np.array_equal(data["train"][1], SK_B)
    assert np.array_equal(data["valid"][0], SK_A) and np.array_equal(data["test"][0], SK_C)


class _WritesMarker:
    """A pickle payload: unpickling it calls open(marker, 'w'), which creates the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _RunsShell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", [_WritesMarker, _RunsShell])
def test_hostile_pickle_is_refused_without_running(tmp_path, payload):
    marker = tmp_path / "pwned"
    hostile = _object_array([SK_A, payload(marker), SK_B])
    path = _npz_with_members(tmp_path / "evil.npz",
                             {"train": _npy(hostile), "valid": _npy(_object_array([SK_B]))})
    with pytest.raises(DataError) as err:
        qd.load_npz(path)
    message = str(err.value)
    assert "evil.npz" in message and "[train]" in message and "refused" in message
    assert ("io.open" in message or "builtins.open" in message or "posix.system" in message
            or "os.system" in message)
    assert not marker.exists()
    # The valid split alone is harmless and loads; the payload is never touched.
    assert len(qd.load_npz_split(path, "valid")) == 1
    assert not marker.exists()
    # The payload is live: plain unpickling (what np.load(allow_pickle=True) does) runs it.
    live = tmp_path / "live"
    buf = _npy(_object_array([payload(live)]))
    np.load(io.BytesIO(buf), allow_pickle=True)
    assert live.exists()


def test_hostile_top_level_object_and_foreign_array_types_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    raw = _npy(_object_array([SK_A]))
    header = raw[:raw.index(b"\n") + 1]
    # A whole member that is one payload behind an honest-looking object-array header.
    evil = header + pickle.dumps(_WritesMarker(marker), protocol=2)
    with pytest.raises(DataError, match="refused"):
        qd.load_npz(_npz_with_members(tmp_path / "a.npz", {"train": evil}), ["train"])
    # A numpy subclass with its own __setstate__ (masked arrays) is not a plain ndarray: refused.
    masked = _object_array([np.ma.masked_array(SK_A, mask=np.zeros_like(SK_A, bool))])
    with pytest.raises(DataError, match="refused"):
        qd.load_npz(_npz_with_members(tmp_path / "m.npz", {"train": _npy(masked)}), ["train"])
    assert not marker.exists()


def test_corrupt_files_give_clear_errors(tmp_path):
    good = qd.save_sketchrnn_npz(tmp_path / "g.npz", {s: [SK_A, SK_B] for s in qd.SPLITS})
    assert good is None
    data = (tmp_path / "g.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.npz.*truncated"):
        qd.load_npz(tmp_path / "cut.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match=r"text\.npz"):
        qd.load_npz(tmp_path / "text.npz")
    with pytest.raises(DataError, match="no such file"):
        qd.load_npz(tmp_path / "missing.npz")
    only_train = _standard_npz(tmp_path / "t.npz", train=[SK_A])
    with pytest.raises(DataError, match=r"no split 'valid'.*\['train'\]"):
        qd.load_npz(only_train)
    # Member with a corrupt header or truncated array data.
    with pytest.raises(DataError, match="magic"):
        qd.load_npz(_npz_with_members(tmp_path / "h.npz", {"train": b"garbage"}), ["train"])
    block = _npy(np.zeros((4, 5, 3), np.int16))
    with pytest.raises(DataError, match="truncated array data"):
        qd.load_npz(_npz_with_members(tmp_path / "d.npz", {"train": block[:-10]}), ["train"])
    with pytest.raises(DataError, match="corrupt pickled"):
        raw = _npy(_object_array([SK_A, SK_B]))
        qd.load_npz(_npz_with_members(tmp_path / "p.npz", {"train": raw[:-20]}), ["train"])


@pytest.mark.parametrize("bad, reason", [
    (np.zeros((0, 3), np.int16), "empty"),
    (np.array([[1, 2, 0], [np.nan, 1, 1]]), "NaN"),
    (np.array([[1, 2, 0], [3, 1, 2]], np.int16), "pen value"),
    (np.zeros((60, 3), np.int16), "max_points=50"),
])
def test_bad_sketch_raises_with_index_or_is_dropped_and_counted(tmp_path, bad, reason):
    path = _standard_npz(tmp_path / "bad.npz", train=[SK_A, SK_B, bad, SK_C])
    with pytest.raises(DataError, match=rf"bad\.npz \[train\] sketch 2: .*{reason}"):
        qd.load_npz(path, ["train"], max_points=50)
    dropped: dict = {}
    data = qd.load_npz(path, ["train"], max_points=50, on_bad="drop", dropped=dropped)
    assert len(data["train"]) == 3
    assert np.array_equal(data["train"][2], SK_C)
    assert list(dropped["train"].values()) == [1] and reason in next(iter(dropped["train"]))


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 2), np.int16), r"sketch 1: shape \(4, 2\)"),
    (np.array(["a", "b", "c"]), r"sketch 1: a <U1 array"),
    ([1, 2, 3], r"sketch 1: a list"),
])
def test_wrong_elements_always_raise(tmp_path, bad, match):
    path = _standard_npz(tmp_path / "w.npz", train=[SK_A, bad])
    with pytest.raises(DataError, match=match):
        qd.load_npz(path, ["train"], on_bad="drop")


def test_on_bad_must_be_known(tmp_path):
    with pytest.raises(ConfigError):
        qd.load_npz(tmp_path / "x.npz", on_bad="ignore")


# ============================================================================================
# RDP and drawing conversion
# ============================================================================================


def test_simplified_drawing_only_becomes_relative():
    drawing = [[[10, 20, 20], [0, 0, 30]], [[50, 60], [40, 40]]]
    s3 = qd.drawing_to_stroke3(drawing, "simplified")
    assert s3.dtype == np.int16
    assert s3.tolist() == [[10, 0, 0], [10, 0, 0], [0, 30, 1], [30, 10, 0], [10, 0, 1]]


def test_raw_drawing_is_aligned_scaled_simplified_and_rounded():
    # Top-left (10, 5); longest side 20 -> x 12.75: (0, 0), (127.5, 0), (255, 255). The middle
    # point is 90 px off the diagonal, so RDP keeps it; 127.5 rounds to 128 (half to even).
    drawing = [[[10.0, 20.0, 30.0], [5.0, 5.0, 25.0], [0, 16, 33]]]
    s3 = qd.drawing_to_stroke3(drawing, "raw")
    assert s3.tolist() == [[0, 0, 0], [128, 0, 0], [127, 255, 1]]
    # Timestamps are ignored: shuffled (non-monotone) ones give the same sketch.
    shuffled = [[[10.0, 20.0, 30.0], [5.0, 5.0, 25.0], [33, 0, 16]]]
    assert np.array_equal(qd.drawing_to_stroke3(shuffled, "raw"), s3)
    # A dense straight raw stroke collapses to its two ends.
    xs = np.linspace(3.0, 40.0, 200).tolist()
    line = qd.drawing_to_stroke3([[xs, [7.0] * 200, list(range(200))]], "raw")
    assert line.tolist() == [[0, 0, 0], [255, 0, 1]]


@pytest.mark.parametrize("drawing, reason", [
    ([], "empty drawing"),
    ([[[], []]], "empty drawing"),
    ([[[1, 2, 3], [1, 2]]], "lengths differ"),
    ([[[1, float("nan")], [1, 2]]], "NaN"),
    ([[[5], [5]]], "single point"),
    ([[["a", 2], [1, 2]]], "non-numeric"),
    ([[list(range(20)), list(range(20))], [list(range(20)), [0] * 20]], "too many points"),
    ("oops", "empty drawing"),
])
def test_bad_drawings_name_their_reason(drawing, reason):
    with pytest.raises(qd._BadDrawing, match=reason):
        qd.drawing_to_stroke3(drawing, "simplified", max_points=30)


def test_format_detection():
    assert qd.detect_format({"word": "cat", "drawing": [[[1], [2]]]}) == "simplified"
    assert qd.detect_format({"word": "cat", "drawing": [[[1], [2], [0]]]}) == "raw"
    assert qd.detect_format({"i": 3, "key_id": "1", "drawing": [[[1], [2], [0], [0]]]}) == "spg"


# ============================================================================================
# Import
# ============================================================================================


def _simplified_line(word, key, drawing):
    return json.dumps({"word": word, "countrycode": "DE", "timestamp": "2017-03-01",
                       "recognized": True, "key_id": key, "drawing": drawing})


def _square(offset=0, size=50):
    o, s = offset, offset + size
    return [[[o, s, s, o, o], [o, o, s, s, o]]]


@pytest.fixture
def simplified_dir(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    cats = []
    for i in range(40):
        cats.append(_simplified_line("cat", str(1000 + i), _square(i % 7)))
    cats += [
        _simplified_line("cat", "1003", _square(99)),            # duplicate key_id
        _simplified_line("cat", "2000", []),                     # empty drawing
        _simplified_line("cat", "2001", [[[4], [4]]]),           # single point
        _simplified_line("cat", "2002", [[[1, 2, 3], [1, 2]]]),  # mismatched lengths
        '{"word": "cat", "key_id": "2003", "drawing": [[[1, NaN], [1, 2]]]}',
        _simplified_line("cat", "2004", [[list(range(300)), list(range(300))]]),  # too long
        "{not json",
        "",
    ]
    (src / "cat.ndjson").write_text("\n".join(cats) + "\n")
    dogs = [_simplified_line("dog", str(5000 + i), _square(3, 20 + i)) for i in range(10)]
    (src / "dog.ndjson").write_text("\n".join(dogs) + "\n")
    return src


def test_import_simplified_counts_drops_and_splits(tmp_path, simplified_dir):
    out = tmp_path / "out"
    report = qd.import_ndjson([simplified_dir], out, max_points=200, progress=False)
    cat = report["categories"]["cat"]
    assert (cat["train"], cat["valid"], cat["test"]) == (36, 2, 2)   # 40 * 0.05 = 2
    assert cat["dropped"] == {"duplicate key_id": 1, "empty drawing": 1, "single point": 1,
                              "xs/ys lengths differ": 1, "NaN or inf coordinates": 1,
                              "too many points": 1}
    assert report["dropped"]["invalid JSON"] == 1 and report["lines_read"] == 57
    assert report["formats"] == {"simplified": 50} and report["imported"] == 50
    assert json.loads((out / "import_report.json").read_text())["imported"] == 50
    data = qd.load_npz(out / "cat.npz")
    keys = {s: qd.read_npz_array(out / "cat.npz", f"{s}_key_ids").tolist() for s in qd.SPLITS}
    everything = keys["train"] + keys["valid"] + keys["test"]
    assert sorted(everything) == [str(1000 + i) for i in range(40)]
    # The first sketch of key 1003 was kept (the duplicate with offset 99 was dropped).
    where = [(s, keys[s].index("1003")) for s in qd.SPLITS if "1003" in keys[s]][0]
    assert data[where[0]][where[1]][0].tolist() == [3, 3, 0]
    assert data["train"].points.dtype == np.float32
    prov = json.loads(str(qd.read_npz_array(out / "cat.npz", "sketchlab_import")))
    assert prov["test_carved_from_train"] == 0 and "seeded" in prov["split_source"]
    # Same seed -> same split; another seed -> another one.
    again = qd.import_ndjson([simplified_dir], tmp_path / "again", max_points=200, progress=False)
    assert again["categories"]["cat"]["train"] == 36
    again_valid = qd.read_npz_array(tmp_path / "again" / "cat.npz", "valid_key_ids").tolist()
    assert again_valid == keys["valid"]
    other = qd.import_ndjson([simplified_dir], tmp_path / "other", max_points=200, seed=5,
                             progress=False)
    assert other["categories"]["cat"]["valid"] == 2
    assert (qd.read_npz_array(tmp_path / "other" / "cat.npz", "valid_key_ids").tolist()
            != keys["valid"])


def test_import_category_filter_and_unknown_category(tmp_path, simplified_dir):
    report = qd.import_ndjson([simplified_dir], tmp_path / "o", categories=["DOG"], progress=False)
    assert list(report["categories"]) == ["dog"]
    assert not (tmp_path / "o" / "cat.npz").exists()
    with pytest.raises(DataError, match=r"unknown category bird; the sources hold: cat, dog"):
        qd.import_ndjson([simplified_dir], tmp_path / "o2", categories=["dog", "bird"],
                         progress=False)
    assert not (tmp_path / "o2").exists()  # nothing written before the check


def test_import_raw_ndjson_through_rdp(tmp_path):
    xs = np.linspace(100.0, 900.0, 400)
    lines = [json.dumps({"word": "line", "key_id": str(k), "countrycode": "US",
                         "drawing": [[xs.tolist(), (50.0 + 0 * xs).tolist(),
                                      np.arange(400.0).tolist()],
                                     [[100.0, 100.0], [50.0, 450.0], [500.0, 510.0]]]})
             for k in range(4)]
    (tmp_path / "line.ndjson").write_text("\n".join(lines))
    report = qd.import_ndjson([tmp_path / "line.ndjson"], tmp_path / "o", progress=False)
    assert report["formats"] == {"raw": 4}
    sketch = qd.load_npz(tmp_path / "o" / "line.npz")["train"][0]
    # 400 dense points on a line collapse to 2; scale 255/800; second stroke 0..127.5 -> 128.
    assert sketch.tolist() == [[0, 0, 0], [255, 0, 1], [-255, 0, 0], [0, 128, 1]]


def _spg_line(i, key, drawing):
    return json.dumps({"i": i, "key_id": key, "drawing": drawing})


def test_import_spg_with_splits_file_carves_a_test_split(tmp_path):
    src = tmp_path / "spg"
    src.mkdir()
    rng = np.random.default_rng(1)
    lines = []
    for i in range(30):
        n = 40
        xs = np.linspace(0, 200, n).astype(int).tolist()  # dense straight line + a corner
        ys = [10] * n
        corner = [[200] * 20, np.linspace(10, 200, 20).astype(int).tolist()]
        parts = [0] * n
        stroke2 = [corner[0], corner[1], [1] * 20]
        if i == 3:
            stroke2.append([1] * 20)  # SPG files sometimes repeat the part ids
        lines.append(_spg_line(i, f"k{i}", [[xs, ys, parts], stroke2]))
        rng.random()
    (src / "ant.ndjson").write_text("\n".join(lines))
    splits = {"ant": {"train": [f"k{i}" for i in range(25)],
                      "valid": [f"k{i}" for i in range(25, 30)]}}
    (src / "splits.json").write_text(json.dumps(splits))
    report = qd.import_ndjson([src], tmp_path / "o", progress=False)
    ant = report["categories"]["ant"]
    assert (ant["train"], ant["valid"], ant["test"]) == (20, 5, 5)
    assert ant["test_carved_from_train"] == 5 and ant["split_source"].endswith("splits.json")
    path = tmp_path / "o" / "ant.npz"
    valid = qd.read_npz_array(path, "valid_key_ids").tolist()
    test = qd.read_npz_array(path, "test_key_ids").tolist()
    assert valid == [f"k{i}" for i in range(25, 30)]
    assert set(test) <= {f"k{i}" for i in range(25)}
    # Dense SPG strokes went through RDP: each straight run is 2 points.
    sketch = qd.load_npz_split(path, "train")[0]
    assert sketch.tolist() == [[0, 10, 0], [200, 0, 1], [0, 0, 0], [0, 190, 1]]
    provenance = json.loads(str(qd.read_npz_array(path, "sketchlab_import")))
    assert provenance["test_carved_from_train"] == 5
    # --splits none: the seeded split instead, nothing carved.
    plain = qd.import_ndjson([src], tmp_path / "p", splits_file=None, progress=False)
    assert plain["categories"]["ant"]["test_carved_from_train"] == 0


def test_import_keeps_earlier_files_when_a_later_write_fails(tmp_path, simplified_dir, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dog.npz").write_bytes(b"old dog file")
    real = qd.save_sketchrnn_npz

    def failing(path, *a, **kw):
        if str(path).endswith("dog.npz"):
            with qd.atomic_open(path) as fh:
                fh.write(b"half a file")
                raise OSError("disk full")
        return real(path, *a, **kw)

    monkeypatch.setattr(qd, "save_sketchrnn_npz", failing)
    with pytest.raises(OSError):
        qd.import_ndjson([simplified_dir], out, max_points=200, progress=False)
    assert len(qd.load_npz(out / "cat.npz")["train"]) == 36   # written before the failure
    assert (out / "dog.npz").read_bytes() == b"old dog file"  # not torn
    assert sorted(p.name for p in out.iterdir()) == ["cat.npz", "dog.npz"]  # no temp files


def test_import_option_errors(tmp_path, simplified_dir):
    with pytest.raises(ConfigError):
        qd.import_ndjson([simplified_dir], tmp_path / "o", fmt="svg")
    with pytest.raises(ConfigError):
        qd.import_ndjson([simplified_dir], tmp_path / "o", split=(0, 0.5, 0.5))
    with pytest.raises(DataError, match="no such file"):
        qd.import_ndjson([tmp_path / "nope.ndjson"], tmp_path / "o")


# ============================================================================================
# load_categories and info
# ============================================================================================


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    qd.save_sketchrnn_npz(d / "cat.npz", {"train": [SK_A, SK_B, SK_C], "valid": [SK_B],
                                          "test": [SK_C, SK_A]})
    qd.save_sketchrnn_npz(d / "dog.npz", {"train": [SK_C, SK_C], "valid": [SK_A, SK_A],
                                          "test": [SK_B]})
    return d


def test_load_categories_concatenates_in_order_with_limit(data_dir):
    data = qd.load_categories(data_dir, "dog,cat", limit_per_category=2)
    train = data["train"]
    assert train.category_names == ("dog", "cat")
    assert train.category.tolist() == [0, 0, 1, 1]
    assert [len(s) for s in train] == [len(SK_C), len(SK_C), len(SK_A), len(SK_B)]
    assert data["valid"].category.tolist() == [0, 0, 1]
    assert data["test"].category.tolist() == [0, 1, 1]
    only = qd.load_categories(data_dir, ["cat"], splits=("valid",))
    assert list(only) == ["valid"] and len(only["valid"]) == 1


def test_load_categories_unknown_lists_folder(data_dir):
    with pytest.raises(DataError, match=r"no bird\.npz.*2 categories: cat, dog"):
        qd.load_categories(data_dir, ["cat", "bird"])
    with pytest.raises(ConfigError):
        qd.load_categories(data_dir, ["cat", "cat"])


def test_describe_npz_matches_hand_computed_numbers(data_dir):
    info = qd.describe_npz(data_dir / "cat.npz")
    train = info["splits"]["train"]
    assert train["count"] == 3
    assert train["length"]["max"] == 5 and train["length"]["p50"] == 4.0
    assert train["strokes"]["max"] == 2
    assert train["strokes"]["mean"] == pytest.approx(4 / 3, abs=0.01)
    xy = np.concatenate([SK_A, SK_B, SK_C])[:, :2].astype(np.float64)
    assert info["scale_factor"] == pytest.approx(xy.std(), abs=1e-4)


def _run_cli(monkeypatch, capsys, *argv):
    monkeypatch.setattr(cli, "CLI_MODULES", ["sketchlab.cli.data"])
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_info_table_and_json(data_dir, monkeypatch, capsys):
    code, out, _ = _run_cli(monkeypatch, capsys, "data", "info", str(data_dir))
    assert code == 0 and "cat.npz" in out and "dog.npz" in out and "scale factor" in out
    code, out, _ = _run_cli(monkeypatch, capsys, "data", "info", str(data_dir / "cat.npz"),
                            "--json")
    assert json.loads(out)["splits"]["test"]["count"] == 2
    code, _, err = _run_cli(monkeypatch, capsys, "data", "info", str(data_dir / "nope.npz"))
    assert code == 2 and "no such file" in err


def test_cli_import(simplified_dir, tmp_path, monkeypatch, capsys):
    code, out, _ = _run_cli(monkeypatch, capsys, "data", "import", str(simplified_dir), "--out",
                            str(tmp_path / "o"), "--max-points", "200", "--quiet",
                            "--split", "0.8,0.1,0.1")
    assert code == 0 and "50 sketches imported" in out and "dropped:" in out
    assert qd.load_npz(tmp_path / "o" / "cat.npz")["valid"].offsets.size == 5  # 4 sketches
    code, _, err = _run_cli(monkeypatch, capsys, "data", "import", str(simplified_dir), "--out",
                            str(tmp_path / "o"), "--categories", "emu", "--quiet")
    assert code == 2 and "unknown category emu" in err


# ============================================================================================
# Download (a local HTTP server; never the internet)
# ============================================================================================


class _Server:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate_next: set[str] = set()
        self.honour_range = True
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = urllib.parse.unquote(self.path)
                rng = self.headers.get("Range")
                server.requests.append((path, rng))
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and server.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path in server.truncate_next:  # the connection drops half way
                    server.truncate_next.discard(path)
                    body = body[: len(body) // 2]
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/sketchrnn"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    s = _Server()
    yield s
    s.close()


def _npz_bytes(tmp_path, name="src.npz", n=300):
    rng = np.random.default_rng(0)
    sketches = [np.concatenate([rng.integers(-20, 20, (8, 2)), np.zeros((8, 1), int)], 1)
                .astype(np.int16) for _ in range(n)]
    for s in sketches:
        s[-1, 2] = 1
    qd.save_sketchrnn_npz(tmp_path / name, {"train": sketches, "valid": sketches[:5],
                                            "test": sketches[:5]})
    return (tmp_path / name).read_bytes()


def test_download_verifies_and_records_sha256(server, tmp_path):
    data = _npz_bytes(tmp_path)
    server.files["/sketchrnn/alarm clock.npz"] = data
    out = tmp_path / "dl"
    result = qd.download_category("alarm clock", out, base_url=server.url, progress=False)
    assert server.requests[0] == ("/sketchrnn/alarm clock.npz", None)
    assert result["status"] == "downloaded" and result["bytes"] == len(data)
    assert (out / "alarm clock.npz").read_bytes() == data
    digest = hashlib.sha256(data).hexdigest()
    assert (out / "alarm clock.npz.sha256").read_text() == f"{digest}  alarm clock.npz\n"
    assert not (out / "alarm clock.npz.part").exists()
    # Again: the verified copy is kept, no request made.
    again = qd.download_category("alarm clock", out, base_url=server.url, progress=False)
    assert again["status"] == "present" and len(server.requests) == 1


def test_download_resumes_after_a_truncated_transfer(server, tmp_path, monkeypatch, capsys):
    data = _npz_bytes(tmp_path)
    server.files["/sketchrnn/cat.npz"] = data
    server.truncate_next.add("/sketchrnn/cat.npz")
    out = tmp_path / "dl"
    code, _, err = _run_cli(monkeypatch, capsys, "data", "download", "cat", "--out", str(out),
                            "--base-url", server.url, "--quiet")
    assert code == 2 and "incomplete" in err and "resume" in err
    part = out / "cat.npz.part"
    assert part.stat().st_size == len(data) // 2 and not (out / "cat.npz").exists()
    code, out_text, _ = _run_cli(monkeypatch, capsys, "data", "download", "cat", "--out", str(out),
                                 "--base-url", server.url, "--quiet")
    assert code == 0 and f"resumed from byte {len(data) // 2}" in out_text
    assert server.requests[-1] == ("/sketchrnn/cat.npz", f"bytes={len(data) // 2}-")
    assert (out / "cat.npz").read_bytes() == data and not part.exists()


def test_download_restarts_when_the_server_ignores_range(server, tmp_path):
    data = _npz_bytes(tmp_path)
    server.files["/sketchrnn/cat.npz"] = data
    server.honour_range = False
    out = tmp_path / "dl"
    out.mkdir()
    (out / "cat.npz.part").write_bytes(b"stale bytes from another file")
    result = qd.download_category("cat", out, base_url=server.url, progress=False)
    assert result["resumed_from"] == 0 and (out / "cat.npz").read_bytes() == data


def test_download_errors(server, tmp_path):
    with pytest.raises(DataError, match=r"unknown category 'catt' .*404.*did you mean 'cat'"):
        qd.download_category("catt", tmp_path, base_url=server.url, progress=False)
    # Unknown names are caught before any request for Google's bucket.
    with pytest.raises(DataError, match=r"unknown category 'alarm_clock'.*'alarm clock'"):
        qd.download_category("alarm_clock", tmp_path, progress=False)
    # Nobody listens on this port.
    dead = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = dead.server_address[1]
    dead.server_close()
    with pytest.raises(DataError, match=rf"could not reach 127.0.0.1:{port}"):
        qd.download_category("cat", tmp_path, base_url=f"http://127.0.0.1:{port}/x",
                             progress=False, timeout=5)
    with pytest.raises(ConfigError, match="base-url"):
        qd.download_category("cat", tmp_path, base_url="ftp:/nowhere", progress=False)


def test_download_checksum_mismatch_and_invalid_file_are_discarded(server, tmp_path, monkeypatch,
                                                                   capsys):
    data = _npz_bytes(tmp_path)
    server.files["/sketchrnn/cat.npz"] = data
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{'0' * 64}  cat.npz\n")
    code, _, err = _run_cli(monkeypatch, capsys, "data", "download", "cat", "--out",
                            str(tmp_path / "dl"), "--base-url", server.url, "--quiet",
                            "--checksums", str(sums))
    assert code == 2 and "does not match" in err
    assert not (tmp_path / "dl" / "cat.npz").exists()
    assert not (tmp_path / "dl" / "cat.npz.part").exists()
    sums.write_text(f"{hashlib.sha256(data).hexdigest()} *cat.npz\n")
    code, _, _ = _run_cli(monkeypatch, capsys, "data", "download", "cat", "--out",
                          str(tmp_path / "dl"), "--base-url", server.url, "--quiet",
                          "--checksums", str(sums))
    assert code == 0
    # A hostile file from a mirror is refused by the safe loader and never renamed into place.
    marker = tmp_path / "pwned"
    server.files["/sketchrnn/dog.npz"] = _npy_zip_bytes(
        {"train": _npy(_object_array([_WritesMarker(marker)])),
         "valid": _npy(_object_array([SK_A])), "test": _npy(_object_array([SK_A]))})
    with pytest.raises(DataError, match="refused"):
        qd.download_category("dog", tmp_path / "dl", base_url=server.url, progress=False)
    assert not marker.exists() and not (tmp_path / "dl" / "dog.npz").exists()


def _npy_zip_bytes(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name + ".npy", data)
    return buf.getvalue()


def test_read_checksums_formats(tmp_path):
    digest = "ab" * 32
    (tmp_path / "a.txt").write_text(f"# comment\n{digest}  alarm clock.npz\n")
    assert qd.read_checksums(tmp_path / "a.txt") == {"alarm clock.npz": digest}
    (tmp_path / "b.json").write_text(json.dumps({"cat": digest.upper()}))
    assert qd.read_checksums(tmp_path / "b.json") == {"cat.npz": digest}
    (tmp_path / "c.txt").write_text("xyz cat.npz\n")
    with pytest.raises(DataError, match="valid sha256"):
        qd.read_checksums(tmp_path / "c.txt")


# ============================================================================================
# Real data (../shared/data)
# ============================================================================================


@pytest.mark.realdata
def test_real_sketchrnn_files_load_like_numpy_does(shared_data):
    path = shared_data / "sketchrnn" / "aaron_sheep.npz"
    data = qd.load_npz(path)
    assert [len(data[s]) for s in qd.SPLITS] == [7400, 300, 300]
    # Trusted reference data: compare with what a plain (unsafe) np.load gives.
    with np.load(path, allow_pickle=True, encoding="latin1") as ref:
        for s in qd.SPLITS:
            want = ref[s]
            got = data[s]
            assert np.array_equal(got.lengths, [len(x) for x in want])
            assert np.array_equal(got.points, np.concatenate(list(want)).astype(np.float32))
    assert data["train"].lengths.max() == 250
    info = qd.describe_npz(path)
    assert 10 < info["scale_factor"] < 40


@pytest.mark.realdata
def test_real_spg_import_two_categories(shared_data, tmp_path):
    spg = shared_data / "spg20"
    report = qd.import_ndjson([spg / "ant.ndjson", spg / "candle.ndjson"], tmp_path / "o",
                              progress=False)
    splits = json.loads((spg / "splits.json").read_text())
    for cat in ("ant", "candle"):
        entry = report["categories"][cat]
        assert (entry["train"], entry["valid"], entry["test"]) == (600, 50, 50)
        assert entry["test_carved_from_train"] == 50 and entry["dropped"] == {}
        assert 20 < entry["mean_length"] < 90 and entry["max_length"] < 300
        path = tmp_path / "o" / f"{cat}.npz"
        assert sorted(qd.read_npz_array(path, "valid_key_ids").tolist()) == sorted(
            str(k) for k in splits[cat]["valid"])
        assert set(qd.read_npz_array(path, "test_key_ids").tolist()) <= {
            str(k) for k in splits[cat]["train"]}
    data = qd.load_categories(tmp_path / "o", ["ant", "candle"])
    assert len(data["train"]) == 1200 and data["train"].category_names == ("ant", "candle")


@pytest.mark.realdata
def test_real_simplified_import_keeps_every_point(shared_data, tmp_path):
    src = shared_data / "quickdraw-simplified"
    files = [src / "The Eiffel Tower.ndjson", src / "cat.ndjson"]
    report = qd.import_ndjson(files, tmp_path / "o", progress=False)
    assert sorted(report["categories"]) == ["The Eiffel Tower", "cat"]
    lines = [json.loads(line) for line in files[1].read_text().splitlines()]
    points = {str(o["key_id"]): sum(len(s[0]) for s in o["drawing"]) for o in lines}
    data = qd.load_npz(tmp_path / "o" / "cat.npz")
    for split in qd.SPLITS:
        keys = qd.read_npz_array(tmp_path / "o" / "cat.npz", f"{split}_key_ids").tolist()
        assert [points[k] for k in keys] == data[split].lengths.tolist()
    assert sum(report["categories"]["cat"][s] for s in qd.SPLITS) == 25


def _hand_pickle(*ops: bytes) -> bytes:
    return b"\x80\x02" + b"".join(ops) + b"."


@pytest.mark.parametrize("stream, match", [
    # ndarray(...) through NEWOBJ: numpy.ndarray is a token, not a type.
    (_hand_pickle(b"cnumpy\nndarray\n", b"(K\x05t", b"\x81"), "corrupt|refused"),
    # Calling the ndarray token directly.
    (_hand_pickle(b"cnumpy\nndarray\n", b"(K\x05t", b"R"),
     "refused to unpickle a call of numpy.ndarray"),
    # _reconstruct of an array with a chosen (huge) shape.
    (_hand_pickle(b"cnumpy.core.multiarray\n_reconstruct\n", b"(cnumpy\nndarray\n",
                  b"J\x00\xe1\xf5\x05\x85", b"U\x01b", b"tR"), "unexpected arguments"),
    # BUILD on an allowed global (would rewrite a wrapper's attributes).
    (_hand_pickle(b"cnumpy\ndtype\n", b"}U\x02fnN", b"s", b"b"), "BUILD on numpy.dtype"),
    # numpy.dtype with a non-string spec.
    (_hand_pickle(b"cnumpy\ndtype\n", b"(]t", b"R"), r"numpy\.dtype\(\[\]\)"),
])
def test_restricted_unpickler_refuses_abuse_of_allowed_globals(tmp_path, stream, match):
    raw = _npy(_object_array([SK_A]))
    member = raw[:raw.index(b"\n") + 1] + stream
    path = _npz_with_members(tmp_path / "x.npz", {"train": member})
    with pytest.raises(DataError, match=match):
        qd.load_npz(path, ["train"])
    assert qd._ALLOWED_GLOBALS[("numpy", "dtype")].fn is qd._dtype  # nothing was rewritten


def test_import_gzip_format_override_and_explicit_splits_file(tmp_path):
    import gzip

    lines = [json.dumps({"key_id": f"g{i}", "drawing": [[[0, 1, 2, 3, 10, 40], [0, 0, 0, 0, 0, 30]]]})
             for i in range(6)]
    with gzip.open(tmp_path / "zig.ndjson.gz", "wt") as fh:
        fh.write("\n".join(lines))
    splits = tmp_path / "my_splits.json"
    splits.write_text(json.dumps({"zig": {"train": ["g0", "g1", "g2"], "valid": ["g3"],
                                          "test": ["g4", "g5"]}}))
    # As simplified data the points stay; forced through RDP (epsilon 2) the collinear run
    # collapses: (10, 0) lies 6 px off the line (0, 0)-(40, 30), (1..3, 0) lie on (0, 0)-(10, 0).
    kept = qd.import_ndjson([tmp_path / "zig.ndjson.gz"], tmp_path / "a", splits_file=splits,
                            progress=False)
    assert (kept["categories"]["zig"]["train"], kept["categories"]["zig"]["test"]) == (3, 2)
    assert kept["categories"]["zig"]["test_carved_from_train"] == 0
    assert qd.load_npz_split(tmp_path / "a" / "zig.npz", "train").lengths.tolist() == [6] * 3
    forced = qd.import_ndjson([tmp_path / "zig.ndjson.gz"], tmp_path / "b", fmt="spg",
                              splits_file=splits, progress=False)
    assert forced["formats"] == {"spg": 6}
    assert qd.load_npz_split(tmp_path / "b" / "zig.npz", "test")[0].tolist() == [
        [0, 0, 0], [10, 0, 0], [30, 30, 1]]


def test_cli_data_without_subcommand_prints_help(monkeypatch, capsys):
    code, out, _ = _run_cli(monkeypatch, capsys, "data")
    assert code == 1 and "import" in out and "download" in out and "info" in out


def test_cli_download_continues_after_one_failure(server, tmp_path, monkeypatch, capsys):
    server.files["/sketchrnn/cat.npz"] = _npz_bytes(tmp_path)
    code, out, err = _run_cli(monkeypatch, capsys, "data", "download", "emu", "cat", "--out",
                              str(tmp_path / "dl"), "--base-url", server.url, "--quiet")
    assert code == 2 and "emu: error: unknown category 'emu'" in err
    assert "1 of 2 downloads failed: emu" in err
    assert (tmp_path / "dl" / "cat.npz").is_file() and "cat.npz" in out
