"""Property-based fuzzing (Hypothesis) of the readers a stranger's file reaches: the sketch-rnn npz
reader, the Sketches reader, the ndjson readers (import and `Sketches.from_ndjson`) and the
config parser (`config.json`, `--hparams`). Every input yields data or a clean `SketchlabError`;
nothing else escapes, and no pickle payload runs.

A few hundred examples per reader (`FUZZ_EXAMPLES`, default 300); derandomized, so CI runs the
same examples every time, and without an example database (nothing written into the repo).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sketchlab.config import apply_hparams, from_dict, split_hparams
from sketchlab.data.ndjson import import_ndjson
from sketchlab.data.npz import load_npz, npz_keys, read_npz_array, save_sketchrnn_npz
from sketchlab.data.sketches import Sketches
from sketchlab.errors import SketchlabError
from sketchlab.models.sketch_rnn import SketchRNN
from sketchlab.train import checkpoint as ckpt

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
WORK = Path(tempfile.mkdtemp(prefix="sketchlab-fuzz-"))
SENTINEL = WORK / "PWNED"


class Payload:
    def __reduce__(self):
        return os.system, (f"touch {SENTINEL}",)


def clean(fn, *args, **kw):
    """Call `fn`; a SketchlabError is a clean refusal (None), anything else fails the test."""
    try:
        return fn(*args, **kw)
    except SketchlabError as e:
        assert str(e).strip() and "\n" not in str(e).strip(), repr(e)
        return None
    finally:
        assert not SENTINEL.exists(), "a pickle payload ran"


# ---- building blocks ------------------------------------------------------------------------

def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def sketchrnn_file() -> bytes:
    path = WORK / "base_rnn.npz"
    rng = np.random.default_rng(0)
    sketches = []
    for n in (3, 5, 8):
        s = rng.integers(-20, 20, size=(n, 3)).astype(np.int16)
        s[:, 2] = 0
        s[-1, 2] = 1
        sketches.append(s)
    save_sketchrnn_npz(path, {"train": sketches, "valid": sketches[:1], "test": sketches[1:]})
    return path.read_bytes()


def sketches_file() -> bytes:
    path = WORK / "base_sk.npz"
    sk = Sketches.from_list([np.array([[1, 2, 0], [3, 4, 1]], np.float32)] * 3,
                            category=[0, 1, 0], category_names=("a", "b"),
                            z=np.ones((3, 2), np.float32))
    sk.save(path)
    return path.read_bytes()


BASES = [sketchrnn_file(), sketches_file()]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=20)
NUMERIC_DTYPES = (hnp.boolean_dtypes() | hnp.integer_dtypes() | hnp.unsigned_integer_dtypes()
                  | hnp.floating_dtypes() | hnp.complex_number_dtypes())
ANY_DTYPES = NUMERIC_DTYPES | hnp.unicode_string_dtypes(max_len=4) | hnp.byte_string_dtypes(
    max_len=4) | hnp.datetime64_dtypes()
ARRAYS = hnp.arrays(ANY_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))


@st.composite
def mutated(draw, base: bytes) -> bytes:
    """A valid file with bytes flipped, cut, inserted or overwritten."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif data:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos:pos + len(chunk)] = chunk
    return bytes(data)


@st.composite
def npy_member(draw) -> bytes:
    kind = draw(st.sampled_from(["array", "header", "pickle", "random", "payload"]))
    if kind == "array":
        return npy_bytes(draw(ARRAYS))
    if kind == "header":   # a header of random fields, then random bytes
        header = {"descr": draw(st.sampled_from(["<f4", "<i8", "|O", "<U3", "|b1", "V0", "<f8",
                                                  "[('a', '<f4')]", "O", "x"])),
                  "fortran_order": draw(st.booleans()),
                  "shape": tuple(draw(st.lists(st.integers(0, 10**7), max_size=3)))}
        text = repr(header) if draw(st.booleans()) else draw(st.text(max_size=40))
        raw = text.encode("latin1", "replace")
        return (b"\x93NUMPY" + bytes([draw(st.integers(0, 4)), 0])
                + len(raw).to_bytes(2, "little") + raw + draw(st.binary(max_size=64)))
    if kind == "pickle":   # object arrays of arbitrary plain Python values, as numpy pickles them
        values = draw(st.lists(JSON | st.just(np.zeros((2, 3), np.int16)), max_size=4))
        arr = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            arr[i] = v
        return npy_bytes(arr)
    if kind == "payload":
        arr = np.empty(1, dtype=object)
        arr[0] = Payload()
        return npy_bytes(arr)
    return draw(st.binary(max_size=200))


MEMBER_NAMES = ["train", "valid", "test", "points", "offsets", "category", "category_names", "z",
                "component", "scale_factor", "format", "sketchlab_import", "x"]


@st.composite
def npz_files(draw) -> bytes:
    kind = draw(st.sampled_from(["mutated", "structured", "random"]))
    if kind == "mutated":
        return draw(mutated(draw(st.sampled_from(BASES))))
    if kind == "random":
        return draw(st.binary(max_size=400))
    names = draw(st.lists(st.sampled_from(MEMBER_NAMES), min_size=1, max_size=6, unique=True))
    members = {f"{n}.npy": draw(npy_member()) for n in names}
    return zip_bytes(members, draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])))


def write(data: bytes, name: str) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


# ---- the npz reader -------------------------------------------------------------------------

@FUZZ
@given(npz_files())
def test_fuzz_sketchrnn_npz_reader(data):
    path = write(data, "fuzz_rnn.npz")
    keys = clean(npz_keys, path)
    for on_bad in ("raise", "drop"):
        out = clean(load_npz, path, on_bad=on_bad)
        if out is not None:
            for sk in out.values():
                assert np.isfinite(sk.points).all() and set(np.unique(sk.points[:, 2])) <= {0, 1}
    for key in (keys or [])[:3]:
        clean(read_npz_array, path, key)


# ---- the Sketches reader --------------------------------------------------------------------

@st.composite
def sketches_arrays(draw) -> bytes:
    """A Sketches file whose arrays are each valid, or random (of random dtype and shape)."""
    n = draw(st.integers(0, 4))
    lengths = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    pts = np.zeros((sum(lengths), 3), np.float32)
    pts[:, :2] = draw(hnp.arrays(np.float32, (len(pts), 2),
                                 elements=st.floats(-1e3, 1e3, width=32)))
    good = {"points": pts, "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "scale_factor": np.array(draw(st.floats(0.1, 100))),
            "format": np.array("sketchlab.Sketches/1"),
            "category": np.zeros(n, np.int64), "category_names": np.array(["a"]),
            "z": np.zeros((n, 2), np.float32), "component": np.zeros(n, np.int64)}
    arrays = {}
    for key, value in good.items():
        choice = draw(st.sampled_from(["good", "good", "random", "absent"]))
        if choice == "good" or key in ("points", "offsets") and choice == "absent":
            arrays[key] = value
        elif choice == "random":
            arrays[key] = draw(ARRAYS)
    return zip_bytes({f"{k}.npy": npy_bytes(v) for k, v in arrays.items()})


@FUZZ
@given(st.one_of(sketches_arrays(), npz_files()))
def test_fuzz_sketches_reader(data):
    path = write(data, "fuzz_sk.npz")
    sk = clean(Sketches.load, path)
    if sk is not None:   # what loads is a valid batch, and saves and loads back the same
        assert np.isfinite(sk.points).all()
        assert set(np.unique(sk.points[:, 2])) <= {0, 1}
        sk.save(WORK / "again.npz")
        back = Sketches.load(WORK / "again.npz")
        assert np.array_equal(back.points, sk.points) and np.array_equal(back.offsets,
                                                                         sk.offsets)


# ---- the ndjson readers -----------------------------------------------------------------------

def drawing_json(draw) -> object:
    strokes = draw(st.lists(st.lists(st.lists(st.integers(-50, 300) | st.floats(
        allow_nan=True, allow_infinity=True) | st.text(max_size=2), max_size=5), min_size=0,
        max_size=3), max_size=4))
    return strokes


@st.composite
def ndjson_line(draw) -> bytes:
    kind = draw(st.sampled_from(["sketch", "sketch", "glued", "json", "bytes", "nested"]))
    if kind in ("sketch", "glued"):
        def one():
            obj = {"word": draw(st.sampled_from(["cat", "dog", "Cat", "a/b", ""]) | st.integers()),
                   "key_id": draw(st.integers(0, 5) | st.text(max_size=3) | st.none()),
                   "drawing": drawing_json(draw)}
            if draw(st.booleans()):
                del obj["word"]
            return json.dumps(obj, allow_nan=True)
        text = one() + (one() if kind == "glued" else "")
        if draw(st.booleans()):   # cut somewhere
            text = text[:draw(st.integers(0, len(text)))]
        return text.encode()
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    if kind == "nested":
        depth = draw(st.integers(1, 3000))
        return b"[" * depth + b"]" * draw(st.integers(0, depth))
    return draw(st.binary(max_size=80)).replace(b"\n", b" ")


@FUZZ
@given(st.lists(ndjson_line(), min_size=1, max_size=8), st.booleans())
def test_fuzz_ndjson_import(lines, gz):
    import gzip
    import shutil

    src = WORK / "src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(WORK / "out", ignore_errors=True)
    src.mkdir()
    data = b"\n".join(lines) + b"\n"
    name = "cat.ndjson.gz" if gz else "cat.ndjson"
    (src / name).write_bytes(gzip.compress(data) if gz else data)
    report = clean(import_ndjson, [src], WORK / "out", progress=False, fmt="auto")
    if report is not None:
        assert report["lines_read"] == sum(1 for b in data.split(b"\n") if b.strip())
        written = 0
        for entry in report["categories"].values():
            if entry.get("file"):
                loaded = load_npz(WORK / "out" / entry["file"])
                assert sum(len(v) for v in loaded.values()) == (entry["train"] + entry["valid"]
                                                                + entry["test"])
                written += sum(len(v) for v in loaded.values())
        assert written == report["imported"]


@FUZZ
@given(st.lists(ndjson_line(), min_size=1, max_size=6))
def test_fuzz_sketches_from_ndjson(lines):
    sk = clean(Sketches.from_ndjson, lines)
    if sk is not None:
        assert np.isfinite(sk.points).all()


# ---- the config parser ----------------------------------------------------------------------

FIELDS = [f for f in SketchRNN.Config.__dataclass_fields__]


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), JSON, max_size=6))
def test_fuzz_config_from_dict(values):
    cfg = clean(from_dict, SketchRNN.Config, values, where="config.json")
    if cfg is not None:   # whatever is accepted is in range
        for name in ("batch_size", "z_size", "enc_rnn_size", "dec_rnn_size"):
            assert getattr(cfg, name) >= 1
        assert math.isfinite(cfg.learning_rate) and cfg.learning_rate > 0


@st.composite
def hparams_text(draw) -> str:
    if draw(st.booleans()):
        return draw(st.text(max_size=60))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(FIELDS) | st.text(max_size=5))
        value = draw(st.text(alphabet="0123456789.-+e[](),'\"abnfiNF ", max_size=12)
                     | st.sampled_from(["nan", "inf", "-1", "0", "1e400", "True", "[1,2]"]))
        parts.append(f"{key}={value}")
    return ",".join(parts)


@FUZZ
@given(hparams_text())
def test_fuzz_hparams(text):
    clean(split_hparams, text)
    cfg = clean(apply_hparams, SketchRNN.Config(), text)
    if cfg is not None:
        assert cfg.batch_size >= 1 and math.isfinite(cfg.learning_rate)


@st.composite
def config_json(draw) -> bytes:
    base = {"format": 1, "kind": "model", "model": "sketch-rnn", "scale_factor": 1.5,
            "categories": ["a", "b"], "config": {"batch_size": 8, "z_size": 4}}
    kind = draw(st.sampled_from(["edited", "edited", "json", "bytes"]))
    if kind == "edited":
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from(sorted(base) + ["config.batch_size", "config.z_size",
                                                       "config.learning_rate", "x"]))
            value = draw(JSON)
            if key.startswith("config.") and isinstance(base.get("config"), dict):
                base["config"][key[7:]] = value
            else:
                base[key] = value
        return json.dumps(base, allow_nan=True).encode()
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    return draw(st.binary(max_size=120))


@FUZZ
@given(config_json())
def test_fuzz_run_config(data):
    run = WORK / "run"
    run.mkdir(exist_ok=True)
    (run / "config.json").write_bytes(data)
    info = clean(ckpt.read_run_config, run)
    if info is not None and info["model"] == "sketch-rnn":
        clean(from_dict, SketchRNN.Config, info["config"], where=str(run / "config.json"))


def test_nothing_ran():
    assert not SENTINEL.exists()


def teardown_module():
    import shutil

    shutil.rmtree(WORK, ignore_errors=True)


pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
