"""Safe sketch-rnn npz reading (the restricted unpickler) and writing."""

import io
import os
import pickle
import pickletools
import zipfile

import numpy as np
import pytest

from npz_samples import (SK_A, SK_B, SK_C, WritesMarker, npy, npz_with_members, object_array,
                         standard_npz)
from sketchlab.data import npz
from sketchlab.data.catalog import describe_npz
from sketchlab.data.npz import SPLITS, load_npz, load_npz_split, read_npz_array, save_sketchrnn_npz
from sketchlab.errors import ConfigError, DataError


# ============================================================================================
# Reading and writing sketch-rnn npz
# ============================================================================================


def test_save_and_load_roundtrip_and_original_tools_can_read_it(tmp_path):
    path = tmp_path / "cat.npz"
    save_sketchrnn_npz(path, {"train": [SK_A, SK_B], "valid": [SK_C], "test": [SK_B]},
                          extra={"train_key_ids": np.array(["k1", "k2"])})
    data = load_npz(path)
    assert [len(data[s]) for s in SPLITS] == [2, 1, 1]
    assert np.array_equal(data["train"][0], SK_A) and np.array_equal(data["train"][1], SK_B)
    assert data["train"].points.dtype == np.float32 and data["train"].scale_factor == 1.0
    assert read_npz_array(path, "train_key_ids").tolist() == ["k1", "k2"]
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


def test_equal_length_sketches_are_still_saved_as_anobject_array(tmp_path):
    path = tmp_path / "same.npz"
    save_sketchrnn_npz(path, {"train": [SK_B, SK_B + 1 - np.array([0, 0, 1], np.int16)]})
    with np.load(path, allow_pickle=True) as f:
        assert f["train"].shape == (2,)


def _scaled_xy(sketch, factor):
    out = sketch.astype(np.float64)
    out[:, :2] *= factor
    return out


def test_save_refuses_what_int16_cannot_hold(tmp_path):
    with pytest.raises(DataError, match="not integers"):
        save_sketchrnn_npz(tmp_path / "x.npz", {"train": [_scaled_xy(SK_A, 0.5)]})
    with pytest.raises(DataError, match="range"):
        save_sketchrnn_npz(tmp_path / "x.npz", {"train": [_scaled_xy(SK_A, 10000)]})
    with pytest.raises(DataError, match="pen column"):
        save_sketchrnn_npz(tmp_path / "x.npz", {"train": [SK_A * 2]})
    with pytest.raises(DataError, match=r"sketch 1"):
        save_sketchrnn_npz(tmp_path / "x.npz", {"train": [SK_A, np.zeros((0, 3))]})
    save_sketchrnn_npz(tmp_path / "f.npz", {"train": [_scaled_xy(SK_A, 0.5)]}, dtype=np.float32)
    assert np.allclose(load_npz_split(tmp_path / "f.npz", "train")[0], _scaled_xy(SK_A, 0.5))
    assert not (tmp_path / "x.npz").exists()


def test_reads_python2_and_protocol2_pickles(tmp_path):
    # Python 3 protocol-2 pickles wrap bytes in _codecs.encode(..., 'latin1'): allowed, checked.
    arr = object_array([SK_A, SK_C])
    raw = npy(arr)
    payload = pickle.dumps(arr, protocol=2)
    assert b"_codecs" in payload
    path = npz_with_members(tmp_path / "p2.npz", {"train": raw[:raw.index(b"\n") + 1] + payload})
    assert np.array_equal(load_npz_split(path, "train")[1], SK_C)


def test_float_and_block_layouts_load(tmp_path):
    path = npz_with_members(tmp_path / "b.npz", {
        "train": npy(np.stack([SK_B, SK_B]).astype(np.float64)),  # one numeric (N, n, 3) block
        "valid": npy(object_array([SK_A.astype(np.float32)])),
        "test": npy(object_array([SK_C.astype(np.int32)]))})
    data = load_npz(path)
    assert len(data["train"]) == 2 and np.array_equal(data["train"][1], SK_B)
    assert np.array_equal(data["valid"][0], SK_A) and np.array_equal(data["test"][0], SK_C)


class _RunsShell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", [WritesMarker, _RunsShell])
def test_hostile_pickle_is_refused_without_running(tmp_path, payload):
    marker = tmp_path / "pwned"
    hostile = object_array([SK_A, payload(marker), SK_B])
    path = npz_with_members(tmp_path / "evil.npz",
                             {"train": npy(hostile), "valid": npy(object_array([SK_B]))})
    with pytest.raises(DataError) as err:
        load_npz(path)
    message = str(err.value)
    assert "evil.npz" in message and "[train]" in message and "refused" in message
    assert ("io.open" in message or "builtins.open" in message or "posix.system" in message
            or "os.system" in message)
    assert not marker.exists()
    # The valid split alone is harmless and loads; the payload is never touched.
    assert len(load_npz_split(path, "valid")) == 1
    assert not marker.exists()
    # The payload is live: plain unpickling (what np.load(allow_pickle=True) does) runs it.
    live = tmp_path / "live"
    buf = npy(object_array([payload(live)]))
    np.load(io.BytesIO(buf), allow_pickle=True)
    assert live.exists()


def test_hostile_top_level_object_and_foreign_array_types_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    raw = npy(object_array([SK_A]))
    header = raw[:raw.index(b"\n") + 1]
    # A whole member that is one payload behind an honest-looking object-array header.
    evil = header + pickle.dumps(WritesMarker(marker), protocol=2)
    with pytest.raises(DataError, match="refused"):
        load_npz(npz_with_members(tmp_path / "a.npz", {"train": evil}), ["train"])
    # A numpy subclass with its own __setstate__ (masked arrays) is not a plain ndarray: refused.
    masked = object_array([np.ma.masked_array(SK_A, mask=np.zeros_like(SK_A, bool))])
    with pytest.raises(DataError, match="refused"):
        load_npz(npz_with_members(tmp_path / "m.npz", {"train": npy(masked)}), ["train"])
    assert not marker.exists()


def test_corrupt_files_give_clear_errors(tmp_path):
    good = save_sketchrnn_npz(tmp_path / "g.npz", {s: [SK_A, SK_B] for s in SPLITS})
    assert good is None
    data = (tmp_path / "g.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.npz.*truncated"):
        load_npz(tmp_path / "cut.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match=r"text\.npz"):
        load_npz(tmp_path / "text.npz")
    with pytest.raises(DataError, match="no such file"):
        load_npz(tmp_path / "missing.npz")
    only_train = standard_npz(tmp_path / "t.npz", train=[SK_A])
    with pytest.raises(DataError, match=r"no split 'valid'.*\['train'\]"):
        load_npz(only_train)
    # Member with a corrupt header or truncated array data.
    with pytest.raises(DataError, match="magic"):
        load_npz(npz_with_members(tmp_path / "h.npz", {"train": b"garbage"}), ["train"])
    block = npy(np.zeros((4, 5, 3), np.int16))
    with pytest.raises(DataError, match="truncated array data"):
        load_npz(npz_with_members(tmp_path / "d.npz", {"train": block[:-10]}), ["train"])
    with pytest.raises(DataError, match="corrupt pickled"):
        raw = npy(object_array([SK_A, SK_B]))
        load_npz(npz_with_members(tmp_path / "p.npz", {"train": raw[:-20]}), ["train"])


@pytest.mark.parametrize("bad, reason", [
    (np.zeros((0, 3), np.int16), "empty"),
    (np.array([[1, 2, 0], [np.nan, 1, 1]]), "NaN"),
    (np.array([[1, 2, 0], [3, 1, 2]], np.int16), "pen value"),
    (np.zeros((60, 3), np.int16), "max_points=50"),
])
def test_bad_sketch_raises_with_index_or_is_dropped_and_counted(tmp_path, bad, reason):
    path = standard_npz(tmp_path / "bad.npz", train=[SK_A, SK_B, bad, SK_C])
    with pytest.raises(DataError, match=rf"bad\.npz \[train\] sketch 2: .*{reason}"):
        load_npz(path, ["train"], max_points=50)
    dropped: dict = {}
    data = load_npz(path, ["train"], max_points=50, on_bad="drop", dropped=dropped)
    assert len(data["train"]) == 3
    assert np.array_equal(data["train"][2], SK_C)
    assert list(dropped["train"].values()) == [1] and reason in next(iter(dropped["train"]))


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 2), np.int16), r"sketch 1: shape \(4, 2\)"),
    (np.array(["a", "b", "c"]), r"sketch 1: a <U1 array"),
    ([1, 2, 3], r"sketch 1: a list"),
])
def test_wrong_elements_always_raise(tmp_path, bad, match):
    path = standard_npz(tmp_path / "w.npz", train=[SK_A, bad])
    with pytest.raises(DataError, match=match):
        load_npz(path, ["train"], on_bad="drop")


def test_on_bad_must_be_known(tmp_path):
    with pytest.raises(ConfigError):
        load_npz(tmp_path / "x.npz", on_bad="ignore")


# ============================================================================================
# Real data (../shared/data)
# ============================================================================================


@pytest.mark.realdata
def test_real_sketchrnn_files_load_like_numpy_does(shared_data):
    path = shared_data / "sketchrnn" / "aaron_sheep.npz"
    data = load_npz(path)
    assert [len(data[s]) for s in SPLITS] == [7400, 300, 300]
    # Trusted reference data: compare with what a plain (unsafe) np.load gives.
    with np.load(path, allow_pickle=True, encoding="latin1") as ref:
        for s in SPLITS:
            want = ref[s]
            got = data[s]
            assert np.array_equal(got.lengths, [len(x) for x in want])
            assert np.array_equal(got.points, np.concatenate(list(want)).astype(np.float32))
    assert data["train"].lengths.max() == 250
    info = describe_npz(path)
    assert 10 < info["scale_factor"] < 40


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
    raw = npy(object_array([SK_A]))
    member = raw[:raw.index(b"\n") + 1] + stream
    path = npz_with_members(tmp_path / "x.npz", {"train": member})
    with pytest.raises(DataError, match=match):
        load_npz(path, ["train"])
    assert npz._ALLOWED_GLOBALS[("numpy", "dtype")].fn is npz._dtype  # nothing was rewritten
