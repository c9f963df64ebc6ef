"""Hostile inputs and faults at every entry point, one table.

Each case runs one `sketchlab` command (in this process, as `sketchlab.cli.main`) or the Python
API's `sketchlab.load` against a hostile file, folder or option, and asserts

* the exit status (2: a user's error);
* one line of error on stderr, `sketchlab CMD: error: ...`, naming the file (or the option) and
  the problem;
* no traceback, and nothing that escaped as an exception;
* nothing executed: pickle payloads in the files would create a sentinel file;
* nothing written half-way or lost: every file in the shared world (data, run, judge, samples)
  and in the case's own folder is byte-for-byte what it was, no file or folder appeared, no
  temporary file was left.

The success paths of the same fixes (glued ndjson objects recovered, a stale lock taken over, a
diverging training stopped, ...) are tested at the end of this file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import sketchlab
from sketchlab.cli import main
from sketchlab.data.ndjson import import_ndjson
from sketchlab.data.sketches import Sketches
from sketchlab.data.synthetic import write_npz_dataset
from sketchlab.errors import SketchlabError
from sketchlab.models.sketch_a_net import Config as JudgeConfig
from sketchlab.models.sketch_a_net import SketchANet
from sketchlab.train import checkpoint as ckpt

CATS = ("star", "fish")
TINY = ("enc_rnn_size=8,dec_rnn_size=16,z_size=4,max_seq_len=60,batch_size=8,num_mixture=2,"
        "checkpoint_every=2")
SENTINEL = "PWNED"


# =============================================================================================
# The world every case starts from (built once)
# =============================================================================================

@dataclass
class World:
    root: Path
    data: Path
    run: Path
    judge: Path
    samples: Path
    log: Path

    @property
    def sentinel(self) -> Path:
        return self.root / SENTINEL


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("world")
    data = root / "data"
    write_npz_dataset(data, 24, categories=list(CATS), n_valid=8, n_test=8)
    (data / "styles.json").unlink()
    run = root / "run"
    assert main(["train", "sketch-rnn", "--data-dir", str(data), "--categories", ",".join(CATS),
                 "--out", str(run), "--max-steps", "2", "--no-progress", "--device", "cpu",
                 "--hparams", TINY]) == 0
    (run / "loss.png").unlink(missing_ok=True)
    judge = root / "judge"
    torch.manual_seed(0)
    model = SketchANet(JudgeConfig(num_classes=len(CATS), width=0.25))
    ckpt.write_run_config(judge, SketchANet.name, model.config, 1.0, CATS)
    ckpt.save_weights(judge / "model.safetensors", model, {"model": SketchANet.name, "step": 0})
    samples = root / "samples.npz"
    sk = Sketches.from_list([np.array([[5, 5, 0], [10, -3, 0], [-4, 8, 1]], np.float32)] * 4,
                            category=[0, 1, 0, 1], category_names=CATS)
    sk.save(samples)
    log = root / "log.csv"
    shutil.copy(run / "log.csv", log)
    return World(root, data, run, judge, samples, log)


# =============================================================================================
# Hostile files
# =============================================================================================

class Payload:
    """A pickle that runs a shell command when unpickled (it must never be)."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def npy(header: str, payload: bytes = b"", version: bytes = b"\x01\x00") -> bytes:
    text = header.encode("latin1")
    text += b" " * ((64 - (len(text) + 11) % 64) % 64) + b"\n"
    return b"\x93NUMPY" + version + len(text).to_bytes(2, "little") + text + payload


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def pickled_npy(obj) -> bytes:
    return npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
               pickle.dumps(obj, protocol=2))


def array_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=True)
    return buf.getvalue()


def sketches_arrays() -> dict[str, np.ndarray]:
    """What Sketches.save writes for three small sketches with categories and codes."""
    pts = np.array([[5, 5, 0], [10, -3, 1], [3, 3, 0], [-2, 4, 1], [7, 1, 0], [1, 1, 1]],
                   np.float32)
    return {"points": pts, "offsets": np.array([0, 2, 4, 6], np.int64),
            "scale_factor": np.array(1.0), "format": np.array("sketchlab.Sketches/1"),
            "category": np.array([0, 1, 0], np.int64),
            "category_names": np.array(CATS, dtype=np.str_),
            "z": np.zeros((3, 4), np.float32), "component": np.array([0, 1, 1], np.int64)}


def sketches_file(**changes):
    """A maker: a Sketches file with some arrays replaced (None removes one)."""
    def make(path: Path, w: World) -> None:
        arrays = sketches_arrays()
        for k, v in changes.items():
            if v is None:
                arrays.pop(k)
            else:
                arrays[k] = v
        write_zip(path, {f"{k}.npy": array_npy(v) for k, v in arrays.items()})
    return make


def rnn_file(sketches=None, members: dict | None = None):
    """A maker: a sketch-rnn npz whose three splits each hold `sketches` (a list of arrays
    or objects), pickled as numpy pickles object arrays."""
    def make(path: Path, w: World) -> None:
        if members is not None:
            write_zip(path, {k: v(w) if callable(v) else v for k, v in members.items()})
            return
        arr = np.empty(len(sketches), dtype=object)
        for i, s in enumerate(sketches):
            arr[i] = s
        write_zip(path, {f"{s}.npy": array_npy(arr) for s in ("train", "valid", "test")})
    return make


def good_sketch(n: int = 3) -> np.ndarray:
    s = np.zeros((n, 3), np.int16)
    s[:, :2] = 4
    s[-1, 2] = 1
    return s


def bytes_file(data: bytes):
    def make(path: Path, w: World) -> None:
        path.write_bytes(data)
    return make


def pickle_rnn(path: Path, w: World) -> None:
    write_zip(path, {f"{s}.npy": pickled_npy(Payload(w.sentinel)) for s in ("train", "valid",
                                                                            "test")})


def pickle_points(path: Path, w: World) -> None:
    arrays = sketches_arrays()
    members = {f"{k}.npy": array_npy(v) for k, v in arrays.items()}
    members["points.npy"] = pickled_npy(Payload(w.sentinel))
    write_zip(path, members)


def zip_bomb(path: Path, w: World) -> None:
    """Members that declare 3.2 GB uncompressed in a file of a few kilobytes (what a zip bomb's
    directory says; a real one is inflated in test_a_real_zip_bomb_is_refused_before_inflating)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in ALL_NAMES:
            zf.writestr(f"{name}.npy", bytes(1000))
    data = bytearray(path.read_bytes())
    declared = (3_200_000_000).to_bytes(4, "little")
    pos = 0
    while (pos := data.find(b"PK\x03\x04", pos)) >= 0:     # local headers
        data[pos + 22:pos + 26] = declared
        pos += 4
    pos = 0
    while (pos := data.find(b"PK\x01\x02", pos)) >= 0:     # the central directory
        data[pos + 24:pos + 28] = declared
        pos += 4
    path.write_bytes(bytes(data))


def truncated(path: Path, w: World) -> None:
    data = (w.data / "star.npz").read_bytes()
    path.write_bytes(data[:len(data) * 6 // 10])


def folder(path: Path, w: World) -> None:
    path.mkdir()


ALL_NAMES = ("train", "valid", "test", "points", "offsets")
HEADER_CODE = npy("{'descr': __import__('os').system('touch PWNED'), 'fortran_order': False, "
                  "'shape': (1,)}")
HEADER_HUGE = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }",
                  b"\0" * 64)
HEADER_V9 = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", b"\0" * 4,
                version=b"\x09\x00")


def same_member(data: bytes):
    def make(path: Path, w: World) -> None:
        write_zip(path, {f"{n}.npy": data for n in ALL_NAMES})
    return make


# name -> (maker, the problem the message must state)
GENERIC_FILES = {
    "pickle-payload": (pickle_rnn, r"refused to unpickle global (posix|os|nt)\.system|"
                                   r"pickled Python objects"),
    "pickle-in-points": (pickle_points, r"pickled Python objects|refused to unpickle"),
    "zip-bomb": (zip_bomb, r"zip bomb"),
    "truncated-zip": (truncated, r"not a readable \.npz|corrupt or truncated"),
    "text-file": (bytes_file(b"hello, this is not a zip\n" * 20), r"not a readable \.npz"),
    "empty-file": (bytes_file(b""), r"not a readable \.npz"),
    "binary-garbage": (bytes_file(bytes(range(256)) * 40), r"not a readable \.npz"),
    "folder": (folder, r"is a folder"),
    "header-is-code": (same_member(HEADER_CODE), r"unreadable \.npy header"),
    "header-huge-shape": (same_member(HEADER_HUGE), r"truncated array data"),
    "npy-version-9": (same_member(HEADER_V9), r"unsupported \.npy format version"),
}

SKETCHES_FILES = {
    "category-out-of-range": (sketches_file(category=np.array([0, 5, 1])),
                              r"'category' holds index 5 but 'category_names' has only 2"),
    "category-length": (sketches_file(category=np.array([0, 1])), r"'category' has shape \(2,\)"),
    "category-negative": (sketches_file(category=np.array([0, -1, 1])), r"negative index -1"),
    "category-floats": (sketches_file(category=np.array([0.5, 1, 0])),
                        r"'category' holds float64 values"),
    "z-length": (sketches_file(z=np.zeros((2, 4), np.float32)), r"'z' has shape \(2, 4\)"),
    "z-nan": (sketches_file(z=np.full((3, 4), np.nan, np.float32)), r"'z' holds NaN"),
    "string-points": (sketches_file(points=np.full((6, 3), "1.5")), r"'points' holds <U3"),
    "points-2-columns": (sketches_file(points=np.zeros((6, 2), np.float32)),
                         r"'points' has shape \(6, 2\)"),
    "points-nan": (sketches_file(points=np.array([[1, 1, 0], [np.nan, 1, 1]] * 3, np.float32)),
                   r"'points' row 1 \(sketch 0\) holds NaN"),
    "pen-value-2": (sketches_file(points=np.array([[1, 1, 0], [1, 1, 2]] * 3, np.float32)),
                    r"pen value 2"),
    "scale-factor-array": (sketches_file(scale_factor=np.array([1.0, 2.0])),
                           r"'scale_factor' has shape \(2,\)"),
    "scale-factor-negative": (sketches_file(scale_factor=np.array(-1.0)),
                              r"'scale_factor' is -1\.0"),
    "scale-factor-string": (sketches_file(scale_factor=np.array("big")),
                            r"'scale_factor' holds <U3"),
    "offsets-end": (sketches_file(offsets=np.array([0, 2, 4, 9])), r"'offsets' runs from 0 to 9"),
    "offsets-decrease": (sketches_file(offsets=np.array([0, 4, 2, 6])), r"'offsets' decreases"),
    "offsets-floats": (sketches_file(offsets=np.array([0.0, 2, 4, 6])),
                       r"'offsets' holds float64"),
    "newer-format": (sketches_file(format=np.array("sketchlab.Sketches/9")),
                     r"format 9, newer than this sketchlab"),
    "names-not-strings": (sketches_file(category_names=np.array([1, 2])),
                          r"'category_names' holds int64"),
}

RNN_FILES = {
    "element-strings": (rnn_file([good_sketch(), np.array([["a", "b", "c"]])]),
                        r"sketch 1: a <U1 array, not a numeric stroke-3 array"),
    "element-2-columns": (rnn_file([good_sketch(), np.zeros((4, 2), np.int16)]),
                          r"sketch 1: shape \(4, 2\), expected \(n, 3\)"),
    "element-dict": (rnn_file([good_sketch(), {"x": 1}]), r"sketch 1: a dict, not a numeric"),
    "element-object-array": (rnn_file([good_sketch(), np.array([None, 1], dtype=object)]),
                             r"sketch 1: a object array, not a numeric"),
    "element-nan": (rnn_file([good_sketch(), np.array([[1, 2, 0], [np.nan, 1, 1]])]),
                    r"sketch 1: not finite"),
    "element-pen-3": (rnn_file([good_sketch(), np.array([[1, 2, 0], [3, 1, 3]], np.int16)]),
                      r"sketch 1: pen value other than 0/1"),
    "element-empty": (rnn_file([good_sketch(), np.zeros((0, 3), np.int16)]),
                      r"sketch 1: empty \(0 points\)"),
    "element-too-long": (rnn_file([good_sketch(), good_sketch(10_001)]),
                         r"sketch 1: longer than max_points=10000"),
    "no-splits": (rnn_file(members={"a.npy": array_npy(np.zeros(3))}),
                  r"neither a sketchlab Sketches file|no split|holds \['a'\]"),
}

# entry point -> (argv template, where the hostile file goes)
NPZ_ENTRIES = {
    "render": (["render", "{bad}", "--out", "{case}/out.png"], "{case}/bad.npz"),
    "data-info": (["data", "info", "{bad}"], "{case}/bad.npz"),
    "sample-condition-on": (["sample", "{run}", "--condition-on", "{bad}", "--out",
                             "{case}/out.npz", "--n", "2", "--device", "cpu"], "{case}/bad.npz"),
    "evaluate": (["evaluate", "{bad}", "--classifier", "{judge}", "--data-dir", "{data}", "--out",
                  "{case}/m.json", "--no-gs", "--device", "cpu", "--quiet"], "{case}/bad.npz"),
    "latent-map": (["latent", "map", "{run}", "--split", "{bad}", "--out", "{case}/map.png",
                    "--method", "pca", "--device", "cpu"], "{case}/bad.npz"),
    "train-data-dir": (["train", "sketch-rnn", "--data-dir", "{case}/data", "--categories",
                        "star,fish", "--out", "{case}/newrun", "--max-steps", "1", "--device",
                        "cpu", "--no-progress", "--hparams", TINY], "{case}/data/star.npz"),
}

# What a reader that expects the other kind of file says instead.
NOT_SKETCHES = r"not a sketchlab Sketches file"
NOT_RNN = r"no split 'train'"


# =============================================================================================
# Hostile run directories
# =============================================================================================

def edit_config(**changes):
    def make(run: Path, w: World) -> None:
        cfg = json.loads((run / "config.json").read_text())
        for k, v in changes.items():
            if k.startswith("config."):
                cfg["config"][k[7:]] = v
            else:
                cfg[k] = v
        (run / "config.json").write_text(json.dumps(cfg))
    return make


def config_text(text: str | bytes):
    def make(run: Path, w: World) -> None:
        (run / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    return make


def config_nan_lr(run: Path, w: World) -> None:
    cfg = json.loads((run / "config.json").read_text())
    cfg["config"]["learning_rate"] = float("nan")       # json writes NaN, and reads it back
    (run / "config.json").write_text(json.dumps(cfg))


def remove(*names):
    def make(run: Path, w: World) -> None:
        for n in names:
            (run / n).unlink()
    return make


def torn_weights(run: Path, w: World) -> None:
    for n in ("model.safetensors", "best.safetensors"):
        data = (run / n).read_bytes()
        (run / n).write_bytes(data[:len(data) // 2])


def nan_weights(run: Path, w: World) -> None:
    for n in ("model.safetensors", "best.safetensors"):
        if not (run / n).is_file():
            continue
        t = load_file(run / n)
        with safe_open(str(run / n), framework="pt") as f:
            meta = f.metadata()
        save_file({k: v * float("nan") for k, v in t.items()}, run / n, metadata=meta)


def wrong_shapes(run: Path, w: World) -> None:
    for n in ("model.safetensors", "best.safetensors"):
        t = load_file(run / n)
        save_file({k: torch.zeros(*(s + 1 for s in v.shape)) for k, v in t.items()}, run / n,
                  metadata={"model": "sketch-rnn", "step": "2"})


def hostile_weights(run: Path, w: World) -> None:
    for n in ("model.safetensors", "best.safetensors"):   # a pickle where safetensors belongs
        (run / n).write_bytes(pickle.dumps(Payload(w.sentinel)))


def run_is_a_file(run: Path, w: World) -> None:
    shutil.rmtree(run)
    run.write_text("not a folder")


def run_missing(run: Path, w: World) -> None:
    shutil.rmtree(run)


NESTED = "[" * 100_000 + "]" * 100_000

RUN_DIRS = {
    "model-a-list": (edit_config(model=["sketch-rnn"]), r"'model' is \['sketch-rnn'\], not a model name"),
    "model-unknown": (edit_config(model="nope"), r"'model' is 'nope', which this sketchlab does not know"),
    "format-a-string": (edit_config(format="x"), r"'format' is 'x', not a run format number"),
    "format-newer": (edit_config(format=99), r"run format 99 is newer"),
    "scale-factor-string": (edit_config(scale_factor="abc"), r"'scale_factor' is 'abc', not a number > 0"),
    "scale-factor-negative": (edit_config(scale_factor=-2.0), r"'scale_factor' is -2\.0"),
    "categories-a-number": (edit_config(categories=5), r"'categories' is 5, not a list of names"),
    "categories-of-numbers": (edit_config(categories=[1, 2]), r"'categories' is \[1, 2\]"),
    "config-a-list": (edit_config(config=[1, 2]), r"'config' is \[1, 2\], not an object"),
    "batch-size-negative": (edit_config(**{"config.batch_size": -4}), r"batch_size=-4: must be an integer >= 1"),
    "batch-size-string": (edit_config(**{"config.batch_size": "many"}), r"batch_size='many'"),
    "z-size-negative": (edit_config(**{"config.z_size": -1}), r"z_size=-1: must be an integer >= 1"),
    "learning-rate-nan": (config_nan_lr, r"learning_rate=nan"),
    "unknown-hyperparameter": (edit_config(**{"config.warp_drive": 9}), r"unknown hyperparameter\(s\) \['warp_drive'\]"),
    "json-nested-100000": (config_text(NESTED), r"nested too deeply"),
    "json-binary": (config_text(bytes(range(256))), r"unreadable"),
    "json-a-list": (config_text("[1, 2, 3]"), r"expected a JSON object"),
    "json-empty": (config_text(""), r"unreadable"),
    "no-config": (remove("config.json"), r"no config\.json here"),
    "torn-weights": (torn_weights, r"not a readable safetensors file"),
    "nan-weights": (nan_weights, r"tensors hold NaN or inf"),
    "wrong-shapes": (wrong_shapes, r"does not match this sketch-rnn configuration"),
    "pickle-as-weights": (hostile_weights, r"not a readable safetensors file"),
    "no-weights": (remove("model.safetensors", "best.safetensors"), r"no weights yet"),
    "run-is-a-file": (run_is_a_file, r"a file, not a run directory"),
    "run-missing": (run_missing, r"no such run directory"),
}

RUN_ENTRIES = {
    "sample": ["sample", "{crun}", "--out", "{case}/out.npz", "--n", "2", "--device", "cpu"],
    "latent-interpolate": ["latent", "interpolate", "{crun}", "--out", "{case}/i.png",
                           "--device", "cpu"],
    "compare": ["compare", "{crun}", "--classifier", "{judge}", "--data-dir", "{data}", "--out",
                "{case}/t.json", "--no-gs", "--device", "cpu", "--quiet", "--per-category", "2"],
    "api-load": ["api-load", "{crun}"],
}

RESUME = ["train", "sketch-rnn", "--data-dir", "{data}", "--categories", "star,fish", "--out",
          "{crun}", "--max-steps", "4", "--device", "cpu", "--no-progress"]
# config.json problems a resume meets first (the weights are read from state.pt)
RESUME_RUN_DIRS = ("model-a-list", "format-a-string", "format-newer", "scale-factor-string",
                   "categories-a-number", "config-a-list", "batch-size-negative",
                   "z-size-negative", "learning-rate-nan", "unknown-hyperparameter",
                   "json-nested-100000", "json-binary")


def edit_state(**changes):
    def make(run: Path, w: World) -> None:
        state = torch.load(run / "state.pt", weights_only=True)
        for k, v in changes.items():
            if v is None:
                state.pop(k)
            else:
                state[k] = v
        torch.save(state, run / "state.pt")
    return make


def state_bytes(make_bytes):
    def make(run: Path, w: World) -> None:
        (run / "state.pt").write_bytes(make_bytes(run, w))
    return make


def state_payload(run: Path, w: World) -> None:
    torch.save({"model": "sketch-rnn", "step": Payload(w.sentinel)}, run / "state.pt")


def state_nan_weights(run: Path, w: World) -> None:
    state = torch.load(run / "state.pt", weights_only=True)
    state["weights"] = {k: v * float("nan") for k, v in state["weights"].items()}
    torch.save(state, run / "state.pt")


STATES = {
    "state-pickle-payload": (state_payload, r"refused: it names Python objects"),
    "state-step-string": (edit_state(step="abc"), r"'step' is 'abc', not a whole number"),
    "state-step-float": (edit_state(step=3.5), r"'step' is 3\.5, not a whole number"),
    "state-step-tensor": (edit_state(step=torch.tensor(3)), r"'step' is tensor\(3\)"),
    "state-epoch-negative": (edit_state(epoch=-1), r"'epoch' is -1"),
    "state-a-list": (state_bytes(lambda r, w: _torch_bytes([1, 2])), r"holds a list"),
    "state-truncated": (state_bytes(lambda r, w: (r / "state.pt").read_bytes()[:300]),
                        r"unreadable or not a sketchlab state file"),
    "state-text": (state_bytes(lambda r, w: b"step=3\n"), r"unreadable or not a sketchlab state"),
    "state-no-optimizer": (edit_state(optimizer=None), r"no 'optimizer' field"),
    "state-rng-garbage": (edit_state(torch_rng=torch.zeros(3)), r"'torch_rng' is not a random"),
    "state-nan-weights": (state_nan_weights, r"tensors hold NaN or inf"),
    "state-of-another-model": (edit_state(model="tiny"), r"state of a 'tiny' run"),
    "state-batch-beyond-epoch": (edit_state(batch_in_epoch=10_000), r"not this data"),
    "state-lr-scale-zero": (edit_state(lr_scale=0.0), r"'lr_scale' is 0\.0"),
}


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# =============================================================================================
# Options and other entry points
# =============================================================================================

def nothing(case: Path, w: World) -> None:
    pass


def make_file(name: str, data: bytes = b"x"):
    def make(case: Path, w: World) -> None:
        (case / name).parent.mkdir(parents=True, exist_ok=True)
        (case / name).write_bytes(data)
    return make


def make_dir(name: str):
    def make(case: Path, w: World) -> None:
        (case / name).mkdir(parents=True)
    return make


def copy_run(case: Path, w: World) -> None:
    shutil.copytree(w.run, case / "run")


def copy_judge_as_run(case: Path, w: World) -> None:
    shutil.copytree(w.judge, case / "run")
    ckpt.save_state(case / "run" / "state.pt", {"model": "sketch-a-net"})


def both(*makers):
    def make(case: Path, w: World) -> None:
        for m in makers:
            m(case, w)
    return make


def ndjson_gz_truncated(case: Path, w: World) -> None:
    import gzip
    data = gzip.compress(b'{"word": "cat", "drawing": [[[1, 2], [3, 4]]]}\n' * 200)
    (case / "cat.ndjson.gz").write_bytes(data[:len(data) // 2])


def splits_json(text: str | bytes):
    def make(case: Path, w: World) -> None:
        (case / "src").mkdir()
        (case / "src" / "cat.ndjson").write_text('{"word": "cat", "key_id": "1", '
                                                 '"drawing": [[[1, 20], [3, 40]]]}\n')
        (case / "src" / "splits.json").write_bytes(text if isinstance(text, bytes)
                                                   else text.encode())
    return make


def judge_copy(change):
    def make(case: Path, w: World) -> None:
        shutil.copytree(w.judge, case / "judge")
        change(case / "judge", w)
    return make


TRAIN = ["train", "sketch-rnn", "--data-dir", "{data}", "--categories", "star,fish", "--out",
         "{case}/newrun", "--max-steps", "1", "--device", "cpu", "--no-progress"]
CLASSIFIER = ["classifier", "train", "--data-dir", "{data}", "--categories", "star,fish",
              "--out", "{case}/clf", "--max-steps", "1", "--device", "cpu", "--quiet",
              "--width", "0.25", "--limit", "8", "--batch-size", "4"]
EVALUATE = ["evaluate", "{samples}", "--classifier", "{judge}", "--data-dir", "{data}", "--out",
            "{case}/m.json", "--no-gs", "--device", "cpu", "--quiet"]


def subst(argv: list[str], **values) -> list[str]:
    return [a.format(**values) for a in argv]


# (id, argv, maker of the case folder, the problem, what the message must name)
OTHER_CASES = [
    # train: options and folders
    ("train/out-is-a-file", TRAIN[:7] + ["{case}/f.txt"] + TRAIN[8:], make_file("f.txt"),
     r"a file, not a run directory", "{case}/f.txt"),
    ("train/batch-size-negative", TRAIN + ["--hparams", "batch_size=-4"], nothing,
     r"batch_size=-4: must be an integer >= 1", "batch_size"),
    ("train/batch-size-zero", TRAIN + ["--hparams", "batch_size=0"], nothing,
     r"batch_size=0: must be an integer >= 1", "batch_size"),
    ("train/learning-rate-nan", TRAIN + ["--hparams", "learning_rate=nan"], nothing,
     r"learning_rate=nan: must be a number > 0", "learning_rate"),
    ("train/learning-rate-inf", TRAIN + ["--hparams", "learning_rate=inf"], nothing,
     r"learning_rate=inf", "learning_rate"),
    ("train/z-size-negative", TRAIN + ["--hparams", "z_size=-1"], nothing,
     r"z_size=-1: must be an integer >= 1", "z_size"),
    ("train/max-seq-len-zero", TRAIN + ["--hparams", "max_seq_len=0"], nothing,
     r"max_seq_len=0", "max_seq_len"),
    ("train/decay-rate-2", TRAIN + ["--hparams", "decay_rate=2"], nothing,
     r"decay_rate=2\.0: must be a number in \[0, 1\]", "decay_rate"),
    ("train/rewind-forever", TRAIN + ["--hparams", "reload_best=1,patience=0"], nothing,
     r"reload_best=True with patience=0 .* never stops", "patience"),
    ("train/clip-mode-unknown", TRAIN + ["--hparams", "clip_mode=sideways"], nothing,
     r"clip_mode='sideways'", "clip_mode"),
    ("train/hparams-unbalanced", TRAIN + ["--hparams", "categories=[star"], nothing,
     r"unbalanced brackets", "--hparams"),
    ("train/hparams-unknown", TRAIN + ["--hparams", "warp_drive=9"], nothing,
     r"unknown hyperparameter 'warp_drive'", "--hparams"),
    ("train/batch-larger-than-data", TRAIN + ["--hparams", "batch_size=1000"], nothing,
     r"fewer than one batch of 1000", "batch_size"),
    ("train/max-steps-negative", TRAIN[:8] + ["--max-steps", "-1", "--device", "cpu"], nothing,
     r"max_steps=-1: must be a whole number >= 0", "max_steps"),
    ("train/max-epochs-negative", TRAIN + ["--max-epochs", "-2"], nothing,
     r"max_epochs=-2", "max_epochs"),
    ("train/max-minutes-nan", TRAIN + ["--max-minutes", "nan"], nothing,
     r"--max-minutes nan: must be a number >= 0", "--max-minutes"),
    ("train/limit-zero", TRAIN + ["--limit-per-category", "0"], nothing,
     r"limit_per_category must be >= 1", "limit_per_category"),
    ("train/data-dir-missing", ["train", "sketch-rnn", "--data-dir", "{case}/nope", "--categories",
                                "star", "--out", "{case}/newrun"], nothing,
     r"no such folder", "{case}/nope"),
    ("train/category-unknown", ["train", "sketch-rnn", "--data-dir", "{data}", "--categories",
                                "star,unicorn", "--out", "{case}/newrun"], nothing,
     r"no unicorn\.npz", "unicorn"),
    ("train/category-twice", ["train", "sketch-rnn", "--data-dir", "{data}", "--categories",
                              "star,star", "--out", "{case}/newrun"], nothing,
     r"listed twice: star", "--categories"),
    ("train/into-a-judge-run", RESUME, copy_judge_as_run,
     r"holds a 'sketch-a-net' model, not 'sketch-rnn'", "{case}/run/config.json"),
    ("train/resume-other-categories", RESUME[:5] + ["fish"] + RESUME[6:], copy_run,
     r"was trained on star,fish", "--categories"),
    ("train/resume-other-data", ["train", "sketch-rnn", "--out", "{case}/run", "--max-steps",
                                 "4", "--device", "cpu", "--no-progress"],
     both(copy_run, lambda case, w: edit_config(data_dir=None, limit_per_category=30)(
         case / "run", w)),
     r"data scale factor .* differs from this data's", "{case}/run"),
    ("train/locked-by-a-live-process", RESUME, copy_run,
     r"another training is writing into this run directory: pid \d+", "{case}/run"),
    # sample: options and outputs
    ("sample/temperature-nan", ["sample", "{run}", "--out", "{case}/o.npz", "--temperature",
                                "nan", "--device", "cpu"], nothing,
     r"temperature=nan: must be a finite number", "temperature"),
    ("sample/temperature-inf", ["sample", "{run}", "--out", "{case}/o.npz", "--temperature",
                                "inf", "--device", "cpu"], nothing,
     r"temperature=inf: must be a finite number", "temperature"),
    ("sample/out-is-a-folder", ["sample", "{run}", "--out", "{case}/d.npz", "--n", "2",
                                "--device", "cpu"], make_dir("d.npz"),
     r"is a folder; give the name of a file", "{case}/d.npz"),
    ("sample/out-under-a-file", ["sample", "{run}", "--out", "{case}/f/o.npz", "--n", "2",
                                 "--device", "cpu"], make_file("f"),
     r"cannot create its folder: .* is a file", "{case}/f"),
    ("sample/condition-on-missing", ["sample", "{run}", "--out", "{case}/o.npz",
                                     "--condition-on", "{case}/none.npz", "--device", "cpu"],
     nothing, r"not a split name .* and no such file", "{case}/none.npz"),
    ("sample/batch-size-zero", ["sample", "{run}", "--out", "{case}/o.npz", "--batch-size", "0",
                                "--device", "cpu"], nothing,
     r"batch_size must be a positive integer", "batch_size"),
    ("sample/which-best-missing-run", ["sample", "{case}/nothing/here", "--out", "{case}/o.npz"],
     nothing, r"no such run directory", "{case}/nothing/here"),
    # render
    ("render/binary-as-csv", ["render", "{case}/log.csv", "--out", "{case}/c.png"],
     make_file("log.csv", bytes(range(256)) * 64), r"not a CSV text file", "{case}/log.csv"),
    ("render/nul-bytes-csv", ["render", "{case}/log.csv", "--out", "{case}/c.png"],
     make_file("log.csv", b"step,loss\n1,\x002\n"), r"not a CSV text file|none of the "
                                                       r"columns \['loss'\] holds numbers",
     "{case}/log.csv"),
    ("render/csv-without-step", ["render", "{case}/log.csv", "--out", "{case}/c.png"],
     make_file("log.csv", b"a,b\n1,2\n"), r"no 'step' column", "{case}/log.csv"),
    ("render/csv-empty", ["render", "{case}/log.csv", "--out", "{case}/c.png"],
     make_file("log.csv", b""), r"no rows to plot", "{case}/log.csv"),
    ("render/csv-to-svg", ["render", "{log}", "--out", "{case}/c.svg"], nothing,
     r"PNG only", "--out"),
    ("render/out-is-a-folder", ["render", "{samples}", "--out", "{case}/d.png"],
     make_dir("d.png"), r"is a folder; give the name of a file", "{case}/d.png"),
    ("render/out-under-a-file", ["render", "{samples}", "--out", "{case}/f/d.png"],
     make_file("f"), r"is a file, not a folder", "{case}/f"),
    ("render/size-60000", ["render", "{samples}", "--out", "{case}/big.png", "--size", "60000"],
     nothing, r"over the limit of 64 megapixels", "--size"),
    ("render/unknown-format", ["render", "{samples}", "--out", "{case}/x.bmp"], nothing,
     r"unknown drawing format '\.bmp'", "{case}/x.bmp"),
    ("render/index-out-of-range", ["render", "{samples}", "--out", "{case}/x.png", "--index",
                                   "99999"], nothing, r"--index 99999 is out of range", "{samples}"),
    ("render/missing-input", ["render", "{case}/none.npz", "--out", "{case}/x.png"], nothing,
     r"no such file", "{case}/none.npz"),
    ("render/state-pt-as-npz", ["render", "{run}/state.pt", "--out", "{case}/x.png"], nothing,
     r"neither a sketchlab Sketches file", "{run}/state.pt"),
    # data import / download
    ("import/out-is-a-file", ["data", "import", "{case}/src", "--out", "{case}/f.txt", "--quiet"],
     both(make_file("f.txt"), make_file("src/cat.ndjson", b'{"drawing": [[[1, 2], [3, 4]]]}\n')),
     r"a file, not a folder", "{case}/f.txt"),
    ("import/source-missing", ["data", "import", "{case}/none.ndjson", "--out", "{case}/o",
                               "--quiet"], nothing, r"no such file or folder", "{case}/none.ndjson"),
    ("import/truncated-gz", ["data", "import", "{case}/cat.ndjson.gz", "--out", "{case}/o",
                             "--quiet"], ndjson_gz_truncated, r"cannot read",
     "{case}/cat.ndjson.gz"),
    ("import/gz-not-gzip", ["data", "import", "{case}/cat.ndjson.gz", "--out", "{case}/o",
                            "--quiet"], make_file("cat.ndjson.gz", b'{"drawing": []}\n'),
     r"cannot read", "{case}/cat.ndjson.gz"),
    ("import/splits-nested", ["data", "import", "{case}/src", "--out", "{case}/o", "--quiet"],
     splits_json("{\"cat\": " + "[" * 100_000 + "]" * 100_000 + "}"), r"nested too deeply",
     "{case}/src/splits.json"),
    ("import/splits-binary", ["data", "import", "{case}/src", "--out", "{case}/o", "--quiet"],
     splits_json(bytes(range(256))), r"cannot read the splits file", "{case}/src/splits.json"),
    ("import/splits-wrong-shape", ["data", "import", "{case}/src", "--out", "{case}/o",
                                   "--quiet"], splits_json('{"cat": ["train"]}'),
     r"category 'cat' must map split names", "{case}/src/splits.json"),
    ("import/max-points-1", ["data", "import", "{case}/src", "--out", "{case}/o", "--quiet",
                             "--max-points", "1"], splits_json("{}"),
     r"max_points must be >= 2", "max_points"),
    ("download/unknown-category", ["data", "download", "unicornz", "--out", "{case}/o",
                                   "--quiet"], nothing, r"unicornz", "unicornz"),
    ("download/checksums-nested", ["data", "download", "cat", "--out", "{case}/o", "--checksums",
                                   "{case}/sums.json", "--quiet"],
     make_file("sums.json", b"{" + b'"a":{' * 50_000 + b"}" * 50_001),
     r"nested too deeply", "{case}/sums.json"),
    ("download/checksums-binary", ["data", "download", "cat", "--out", "{case}/o", "--checksums",
                                   "{case}/sums.txt", "--quiet"],
     make_file("sums.txt", bytes(range(128, 256)) * 8), r"cannot read checksums",
     "{case}/sums.txt"),
    # evaluate, compare, classifier
    ("evaluate/judge-config-model-list", EVALUATE[:3] + ["{case}/judge"] + EVALUATE[4:],
     judge_copy(edit_config(model=["sketch-a-net"])), r"'model' is \['sketch-a-net'\]",
     "{case}/judge/config.json"),
    ("evaluate/judge-nan-weights", EVALUATE[:3] + ["{case}/judge"] + EVALUATE[4:],
     judge_copy(nan_weights), r"tensors hold NaN or inf", "{case}/judge/model.safetensors"),
    ("evaluate/judge-nested-json", EVALUATE[:3] + ["{case}/judge"] + EVALUATE[4:],
     judge_copy(config_text(NESTED)), r"nested too deeply", "{case}/judge/config.json"),
    ("evaluate/judge-is-a-sketch-rnn-run", EVALUATE[:3] + ["{run}"] + EVALUATE[4:], nothing,
     r"holds a 'sketch-rnn' model, not 'sketch-a-net'", "{run}/config.json"),
    ("evaluate/samples-missing", ["evaluate", "{case}/none.npz"] + EVALUATE[2:], nothing,
     r"no such file", "{case}/none.npz"),
    ("evaluate/out-is-a-folder", EVALUATE[:7] + ["{case}/m.json"] + EVALUATE[8:],
     make_dir("m.json"), r"is a folder; give the name of a file", "{case}/m.json"),
    ("classifier/lr-nan", CLASSIFIER + ["--lr", "nan"], nothing, r"learning_rate=nan",
     "learning_rate"),
    ("classifier/batch-size-zero", CLASSIFIER[:-2] + ["--batch-size", "0"], nothing,
     r"batch_size=0", "batch_size"),
    ("classifier/width-negative", CLASSIFIER + ["--width", "-1"], nothing, r"width=-1",
     "width"),
    ("classifier/epochs-negative", CLASSIFIER + ["--epochs", "-1"], nothing, r"max_epochs=-1",
     "max_epochs"),
    ("classifier/out-is-a-file", CLASSIFIER[:7] + ["{case}/f.txt"] + CLASSIFIER[8:],
     make_file("f.txt"), r"a file, not a run directory", "{case}/f.txt"),
    ("classifier/data-dir-missing", CLASSIFIER[:3] + ["{case}/nope"] + CLASSIFIER[4:], nothing,
     r"{case}/nope", "{case}/nope"),
    # latent, zoo
    ("latent/interpolate-index", ["latent", "interpolate", "{run}", "--out", "{case}/i.png",
                                  "--a", "0", "--b", "9999", "--device", "cpu"], nothing,
     r"9999", "--b"),
    ("latent/split-unknown", ["latent", "map", "{run}", "--out", "{case}/m.png", "--split",
                              "bogus", "--device", "cpu"], nothing,
     r"not a split name .* and no such file", "bogus"),
    ("zoo/info-unknown", ["zoo", "info", "no-such-model"], nothing,
     r"'no-such-model' is neither a run directory nor a pretrained model|unknown",
     "no-such-model"),
    ("zoo/sample-unknown", ["sample", "zoo:no-such-model", "--out", "{case}/o.npz"], nothing,
     r"no-such-model", "no-such-model"),
]


# =============================================================================================
# Running a case
# =============================================================================================

@dataclass
class Case:
    id: str
    argv: list[str]
    make: object
    problem: str
    names: str                   # what the message must name (a path, or an option)
    place: str = "{case}/bad.npz"   # where a hostile file goes ({bad})
    run_maker: object = None     # tampers with a copy of the run ({crun})
    file_maker: bool = False     # `make` writes the hostile file at `place`, not into {case}


def build_cases() -> list[Case]:
    cases: list[Case] = []
    for entry, (argv, place) in NPZ_ENTRIES.items():
        for name, (maker, problem) in GENERIC_FILES.items():
            if entry == "train-data-dir" and name == "folder":
                problem = r"no star\.npz"
            if entry == "data-info" and name == "folder":   # a folder of npz files is fine
                problem = r"folder holds no \.npz files"
            if entry == "evaluate" and name == "pickle-payload":
                problem = NOT_SKETCHES
            if entry == "train-data-dir" and name == "pickle-in-points":
                problem = NOT_RNN
            cases.append(Case(f"npz/{entry}/{name}", argv, maker, problem,
                              "{bad}" if not (entry == "train-data-dir" and name == "folder")
                              else "star.npz", place, file_maker=True))
        if entry != "train-data-dir":
            for name, (maker, problem) in SKETCHES_FILES.items():
                cases.append(Case(f"npz/{entry}/sketches-{name}", argv, maker, problem, "{bad}",
                                  place, file_maker=True))
        if entry != "evaluate":
            for name, (maker, problem) in RNN_FILES.items():
                if entry == "train-data-dir" and name == "no-splits":
                    problem = NOT_RNN
                cases.append(Case(f"npz/{entry}/rnn-{name}", argv, maker, problem, "{bad}",
                                  place, file_maker=True))
        else:
            cases.append(Case("npz/evaluate/a-sketch-rnn-file", argv,
                              rnn_file([good_sketch()]), NOT_SKETCHES, "{bad}", place,
                              file_maker=True))
    for entry, argv in RUN_ENTRIES.items():
        for name, (maker, problem) in RUN_DIRS.items():
            names = "{crun}" if name in ("run-is-a-file", "run-missing", "no-weights") else (
                "{crun}/config.json" if name in ("model-a-list", "model-unknown", "format-a-string",
                                                "format-newer", "scale-factor-string",
                                                "scale-factor-negative", "categories-a-number",
                                                "categories-of-numbers", "config-a-list",
                                                "batch-size-negative", "batch-size-string",
                                                "z-size-negative", "learning-rate-nan",
                                                "unknown-hyperparameter", "json-nested-100000",
                                                "json-binary", "json-a-list", "json-empty",
                                                "no-config")
                else "{crun}/best.safetensors")
            if name == "run-missing" and entry == "api-load":
                problem = r"no such run directory"
            cases.append(Case(f"run/{entry}/{name}", argv, nothing, problem, names,
                              run_maker=maker))
    for name in RESUME_RUN_DIRS:
        maker, problem = RUN_DIRS[name]
        cases.append(Case(f"run/train-resume/{name}", RESUME, nothing, problem,
                          "{crun}/config.json", run_maker=maker))
    for name, (maker, problem) in STATES.items():
        cases.append(Case(f"run/train-resume/{name}", RESUME, nothing, problem, "{crun}/state.pt",
                          run_maker=maker))
    for cid, argv, maker, problem, names in OTHER_CASES:
        cases.append(Case(cid, argv, maker, problem, names))
    return cases


CASES = build_cases()


def snapshot(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            key = str(p)
            out[key] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def call(argv: list[str]) -> int:
    if argv[0] == "api-load":
        try:
            sketchlab.load(argv[1], device="cpu")
        except SketchlabError as e:
            print(f"sketchlab api: error: {e}", file=sys.stderr)
            return 2
        return 0
    return main(argv)


LOCK_HOLDER = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": os.uname().nodename,
                         "command": "another trainer", "started": "now"}).encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_the_table_has_enough_cases():
    assert len(CASES) >= 120
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, world: World, tmp_path: Path, capsys):
    values = {"case": str(tmp_path), "run": str(world.run), "data": str(world.data),
              "judge": str(world.judge), "samples": str(world.samples), "log": str(world.log),
              "crun": str(tmp_path / "run"), "bad": ""}
    bad = Path(case.place.format(**values))
    values["bad"] = str(bad)
    holder = None
    if case.place.startswith("{case}/data/"):
        shutil.copytree(world.data, tmp_path / "data")
        bad.unlink()
    if case.run_maker is not None:
        shutil.copytree(world.run, tmp_path / "run")
        case.run_maker(tmp_path / "run", world)
    if case.file_maker:
        case.make(bad, world)
    else:
        case.make(tmp_path, world)
    if case.id == "train/locked-by-a-live-process":
        holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER,
                                   str(tmp_path / "run" / ckpt.LOCK_FILE)],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "locked"
    argv = subst(case.argv, **values)
    before = snapshot(world.root, tmp_path)
    capsys.readouterr()
    try:
        try:
            code = call(argv)
        except BaseException as e:  # noqa: BLE001 - anything that escapes is a failure
            import traceback
            pytest.fail(f"{' '.join(argv)} raised instead of failing cleanly:\n"
                        f"{''.join(traceback.format_exception(e))[-3000:]}")
        out, err = capsys.readouterr()
        after = snapshot(world.root, tmp_path)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    assert code == 2, (argv, code, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    assert err.strip().splitlines()[-1] == errors[0]          # the last word, on one line
    message = errors[0].split(": error: ", 1)[1]
    assert message.strip(), err
    names = case.names.format(**values)
    assert names in message, f"the message does not name {names}: {message}"
    assert __import__("re").search(case.problem.format(**values), message), \
        f"the message does not say {case.problem!r}: {message}"
    assert "weights_only=False" not in message
    assert not world.sentinel.exists(), "a pickle payload ran"
    assert not (tmp_path / SENTINEL).exists() and not Path(SENTINEL).exists()
    changed = sorted({k for k in set(before) | set(after) if before.get(k) != after.get(k)})
    assert not changed, f"files changed, appeared or vanished: {changed[:6]}"


# =============================================================================================
# The success paths of the same fixes
# =============================================================================================

def test_glued_raw_ndjson_objects_are_recovered_and_dropped_lines_reported(tmp_path):
    """Raw QuickDraw exports hold lines with two objects glued (`...}{"word": ...`): both
    sketches are kept; what cannot be read is listed by file and line in import_report.json."""
    def raw(word, key, shift=0):
        xs = [0 + shift, 40, 80, 120]
        return json.dumps({"word": word, "key_id": key, "countrycode": "US",
                           "drawing": [[xs, [0, 30, 10, 60], [0, 15, 33, 50]],
                                       [[10, 50], [90, 5], [60, 70]]]})
    src = tmp_path / "raw"
    src.mkdir()
    lines = [raw("cat", "1").encode(),
             (raw("cat", "2") + raw("dog", "3")).encode(),                  # two glued objects
             (raw("cat", "4") + raw("dog", "5") + raw("cow", "6")).encode(),  # three
             (raw("dog", "7") + '{"word": "dog", "drawing": [[[1').encode(),  # a torn second
             ("[" * 100_000 + "]" * 100_000).encode(),                    # nested 100,000 deep
             b'{"word": "cow", "drawing": [[[1, 2], [3]]]}',              # xs/ys lengths differ
             b"\xff\xfe not json",
             (raw("cow", "8") + "   ").encode(),
             b""]
    (src / "mixed.ndjson").write_bytes(b"\n".join(lines))
    out = tmp_path / "out"
    assert main(["data", "import", str(src), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "import_report.json").read_text())
    per_cat = {name: c["train"] + c["valid"] + c["test"] for name, c in report["categories"].items()}
    assert per_cat == {"cat": 3, "dog": 3, "cow": 2}
    assert report["imported"] == 8
    f = str(src / "mixed.ndjson")
    assert report["joined_lines"] == {f: [2, 3, 4]}      # 4: one object, then a torn one
    assert report["dropped_lines"][f] == {"invalid JSON": [4, 5, 7], "xs/ys lengths differ": [6]}
    # the same in chunks converted by two processes (line numbers count across chunks)
    chunked = import_ndjson([src], tmp_path / "out2", processes=2, chunk_bytes=300,
                            progress=False)
    for key in ("joined_lines", "dropped_lines", "imported", "lines_read"):
        assert chunked[key] == report[key], key
    for name in ("cat.npz", "dog.npz", "cow.npz"):
        assert (out / name).read_bytes() == (tmp_path / "out2" / name).read_bytes()


@pytest.mark.realdata
def test_real_ndjson_imports_every_line_unchanged(shared_data, tmp_path):
    """The real files have no glued or broken lines: every line becomes a sketch, as before."""
    src = shared_data / "quickdraw-simplified"
    files = sorted(src.glob("*.ndjson"))[:40]
    out = tmp_path / "qd"
    report = import_ndjson(files, out, progress=False)
    lines = sum(1 for f in files for line in f.read_text().splitlines() if line.strip())
    assert report["lines_read"] == lines and report["imported"] == lines
    assert report["dropped"] == {} and report["joined_lines"] == {} and \
        report["dropped_lines"] == {}


def test_sketches_from_ndjson_reads_glued_objects_and_refuses_deep_nesting(tmp_path):
    a = '{"word": "cat", "drawing": [[[0, 10], [0, 10]]]}'
    sk = Sketches.from_ndjson([a + a, a])
    assert len(sk) == 3
    with pytest.raises(SketchlabError, match=r"ndjson line:1: invalid JSON \(nested too deeply\)"):
        Sketches.from_ndjson(["[" * 100_000 + "]" * 100_000])


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_note(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ckpt.LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename,
                                                  "command": "sketchlab train (killed)"}))
    argv = subst(RESUME, data=str(world.data), crun=str(run))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"was left by pid {dead.pid}" in out and "taking the run over" in out
    assert not (run / ckpt.LOCK_FILE).exists()
    assert ckpt.load_state(run / "state.pt")["step"] == 4


def test_a_lock_of_another_machine_is_not_taken(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    (run / ckpt.LOCK_FILE).write_text(json.dumps({"pid": 1234, "host": "elsewhere",
                                                  "command": "sketchlab train"}))
    with pytest.raises(SketchlabError, match=r"pid 1234 on elsewhere.*delete .*train\.lock"):
        with ckpt.RunLock(run):
            pass


def test_leftover_temporary_files_are_removed_when_training_resumes(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    for name in (".state.pt.abc123.tmp", ".model.safetensors.xyz.tmp"):
        (run / name).write_bytes(b"half a checkpoint")
    assert main(subst(RESUME, data=str(world.data), crun=str(run))) == 0
    assert "removed 2 unfinished temporary file(s)" in capsys.readouterr().out
    assert not list(run.glob(".*.tmp"))


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(world, tmp_path,
                                                                    monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    before = {n: (run / n).read_bytes() for n in ("state.pt", "model.safetensors",
                                                  "best_state.pt", "best.safetensors")}

    def full(obj, fh, *a, **kw):   # the disk fills up in the middle of a state file
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    code = main(subst(RESUME, data=str(world.data), crun=str(run)))
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert "No space left on device" in line and "the previous one is intact" in line
    assert str(run) in line and "Traceback" not in err
    assert {n: (run / n).read_bytes() for n in before} == before
    assert not list(run.glob(".*.tmp")) and not (run / ckpt.LOCK_FILE).exists()
    assert main(subst(RESUME, data=str(world.data), crun=str(run))) == 0   # resumes later


def test_sample_refuses_to_write_nan_sketches(world, tmp_path):
    sk = Sketches.from_list([np.array([[1, 2, 0], [np.nan, 1, 1]], np.float32)])
    with pytest.raises(SketchlabError, match=r"x\.npz: not written: sketch 0 holds NaN"):
        sk.save(tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def test_state_file_refusal_does_not_advise_weights_only_false(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    state_payload(run, world)
    with pytest.raises(SketchlabError) as info:
        ckpt.load_state(run / "state.pt")
    text = str(info.value)
    assert "weights_only" not in text and "refused" in text and "system" in text
    assert not world.sentinel.exists()


def test_a_divergence_that_persists_stops_with_what_to_change(tmp_path):
    """NaN after every restore: new batches and a halved learning rate each time, at most
    MAX_NAN_RESTORES times, then a message naming learning_rate and grad_clip; nothing NaN is
    ever written."""
    from test_trainer import Tiny, TinyConfig, toy_splits

    from sketchlab.train.trainer import MAX_NAN_RESTORES, Trainer, prepare_data

    cfg = TinyConfig(nan_calls=tuple(range(9, 10_000)))
    data = prepare_data(Tiny, cfg, toy_splits())
    msgs = []
    tr = Trainer(Tiny(data.config), data, tmp_path / "run", progress=False, max_steps=1000,
                 log=msgs.append)
    with pytest.raises(SketchlabError, match=r"training diverged .* lower learning_rate .* "
                                             r"grad_clip"):
        tr.train()
    restores = [m for m in msgs if "restored the checkpoint" in m]
    assert len(restores) == MAX_NAN_RESTORES
    assert [f"x{0.5 ** k:g}" in m for k, m in zip(range(1, 4), restores)] == [True] * 3
    state = ckpt.load_state(tmp_path / "run" / "state.pt")
    assert all(torch.isfinite(v).all() for v in state["weights"].values())
    assert not (tmp_path / "run" / ckpt.LOCK_FILE).exists()


def test_nan_weights_are_never_saved_as_best(tmp_path):
    """A model whose buffers turn NaN while the loss stays finite (batch-norm statistics of a
    diverged forward pass): no checkpoint holds them, the run stops with a message."""
    from test_trainer import Tiny, TinyConfig, toy_splits

    from sketchlab.train.trainer import Trainer, prepare_data

    class Poisoned(Tiny):
        def on_step_end(self, step):
            super().on_step_end(step)
            if step >= 3:
                self.seen.fill_(float("nan"))

    cfg = TinyConfig(eval_every=2)
    data = prepare_data(Poisoned, cfg, toy_splits())
    tr = Trainer(Poisoned(data.config), data, tmp_path / "run", progress=False, max_steps=50,
                 log=lambda m: None)
    with pytest.raises(SketchlabError, match="training diverged"):
        tr.train()
    for name in ("model.safetensors", "best.safetensors"):
        assert all(torch.isfinite(v).all() for v in load_file(tmp_path / "run" / name).values())


def test_log_has_no_duplicate_rows_after_resumes(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    with open(run / "log.csv", "a") as fh:    # rows a killed run wrote after its checkpoint
        fh.write("3,0,0.001,1.0," + ",".join(["1"] * 5) + "\n4,0,0.00")
    assert main(subst(RESUME, data=str(world.data), crun=str(run))) == 0
    with open(run / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["step"], bool(r["valid_loss"])) for r in rows] == [("2", True), ("4", True)]


def test_a_real_zip_bomb_is_refused_before_inflating(tmp_path):
    """80 MiB of zeros deflated into ~80 KiB (three such members): refused from the zip's
    directory, so reading it costs kilobytes, not the declared size."""
    import tracemalloc

    from sketchlab.data.npz import load_npz

    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name in ("train", "points", "offsets"):
            zf.writestr(f"{name}.npy", bytes(80 << 20))
    tracemalloc.start()
    for read in (lambda: load_npz(path, ("train",)), lambda: Sketches.load(path)):
        with pytest.raises(SketchlabError, match=r"zip bomb"):
            read()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20, peak


def test_sample_out_png_keeps_the_samples(world, tmp_path):
    out = tmp_path / "x.png"
    code = main(["sample", str(world.run), "--out", str(out), "--n", "3", "--device", "cpu"])
    if code == 0:
        npz = [p for p in tmp_path.iterdir() if p.suffix == ".npz"]
        assert npz and len(Sketches.load(npz[0])) == 3       # the samples survive
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"   # and the picture is a PNG
    else:
        assert code == 2 and not out.exists()


@pytest.mark.slow
def test_a_judge_trained_with_a_huge_learning_rate_fails_and_saves_no_nan(world, tmp_path,
                                                                          capsys):
    out = tmp_path / "clf"
    code = main(["classifier", "train", "--data-dir", str(world.data), "--categories",
                 "star,fish", "--out", str(out), "--epochs", "20", "--device", "cpu", "--quiet",
                 "--width", "0.25", "--limit", "16", "--valid-limit", "8", "--batch-size", "8",
                 "--lr", "1e6"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "training diverged" in line and "--lr" in line and str(out) in line
    for name in ("model.safetensors", "best.safetensors"):
        assert all(torch.isfinite(v).all() for v in load_file(out / name).values())
