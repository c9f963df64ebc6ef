"""The evaluation protocol (`sketchlab.eval.evaluate`) and the `evaluate`/`compare`/`classifier`
commands, on tiny synthetic data."""

import argparse
import itertools
import importlib.util
import json

import numpy as np
import pytest
import torch

import raster_standin
from sketchlab.data.npz import save_sketchrnn_npz
from sketchlab.data.sketches import Sketches
from sketchlab.errors import CheckpointError, DataError
from sketchlab import runs
from sketchlab.cli import evaluate as commands
from sketchlab.eval import evaluate as E
from sketchlab.eval import judge as J
from sketchlab.eval.features import FeatureExtractor
from sketchlab.models.sketch_a_net import Config, SketchANet
from sketchlab.train import checkpoint as ckpt

raster_standin.install()

CATS = ("square", "zigzag")
SPLITS = {"train": 6, "valid": 5, "test": 5}
SIZES = itertools.count(5)


def make_sketch(cat: str, rng) -> np.ndarray:
    # Integer offsets (sketch-rnn files store int16); distinct sizes keep every sketch distinct.
    s = float(next(SIZES))
    if cat == "square":
        return np.array([[0, 0, 0], [s, 0, 0], [0, s, 0], [-s, 0, 0], [0, -s, 1]], np.float32)
    rows = [[0, 0, 0]] + [[4.0, s if i % 2 == 0 else -s, 0] for i in range(int(rng.integers(4, 8)))]
    rows[-1][2] = 1
    return np.array(rows, np.float32)


@pytest.fixture
def data_dir(tmp_path):
    """One sketch-rnn npz per category (train/valid/test), as `sketchlab data import` writes."""
    rng = np.random.default_rng(1)
    root = tmp_path / "data"
    root.mkdir()
    for c in CATS:
        save_sketchrnn_npz(root / f"{c}.npz", {split: [make_sketch(c, rng) for _ in range(n)]
                                               for split, n in SPLITS.items()})
    return root


def stats_code(sketch: np.ndarray) -> np.ndarray:
    """A deterministic stand-in 'encoder': simple statistics of a sketch."""
    a = np.cumsum(sketch[:, :2], 0)
    return np.array([len(sketch), *np.abs(sketch[:, :2]).sum(0), *a.min(0), *a.max(0),
                     sketch[:, 2].sum()], np.float64)


class StatsJudge(FeatureExtractor):
    """A fast stand-in judge: statistics as features, a fixed linear map as logits."""

    name = "stats"
    run_dir = None
    categories = CATS

    def images(self, sketches):
        return torch.tensor(np.stack([stats_code(s) for s in sketches]))

    def features_and_logits(self, images):
        # zigzags have more points: logit of "zigzag" grows with the point count
        return images, torch.stack([5.5 - images[:, 0], images[:, 0] - 5.5], 1)

    def labels(self, sketches, where="x"):
        return J.category_labels(sketches, CATS, where)


FAST = E.EvalConfig(gs_runs=3, gs_workers=1, is_splits=2,
                    gs=importlib.util.find_spec("gudhi") is not None)


def test_load_split_counts_and_order(data_dir):
    sk = E.load_split(data_dir, ["zigzag", "square"], "test", {"zigzag": 2, "square": 3})
    assert sk.category_names == ("zigzag", "square")
    assert sk.category.tolist() == [0, 0, 1, 1, 1]
    assert len(E.load_split(data_dir, list(CATS), "valid")) == 10
    with pytest.raises(DataError, match="no cat.npz"):
        E.load_split(data_dir, ["cat"], "test")


def test_identity_samples_score_like_the_reference(data_dir):
    ref = E.load_split(data_dir, CATS, "test")
    real = E.load_split(data_dir, CATS, "valid")
    samples = ref.select(np.arange(len(ref)))
    res = E.evaluate_sets({"copy": samples}, ref, StatsJudge(), real=real, config=FAST)
    rows = {r["set"]: r for r in res["rows"]}
    assert list(rows) == ["reference", "real", "copy"]
    assert rows["copy"]["fid"] == pytest.approx(0.0, abs=1e-4)   # sqrtm rounding
    assert (rows["copy"]["precision"], rows["copy"]["recall"]) == (1.0, 1.0)
    assert rows["copy"]["rec@1"] == rows["reference"]["rec@1"] == 1.0
    assert rows["copy"]["is"] == pytest.approx(rows["reference"]["is"])
    assert rows["real"]["fid"] > 0 and "fid" not in rows["reference"]
    assert all("gs_x1000" in rows[k] for k in ("real", "copy")) or not FAST.gs
    assert rows["copy"]["rec@1_per_category"] == {"square": 1.0, "zigzag": 1.0}


def test_compare_runs_ret_is_one_for_identity_generation(data_dir):
    ref = E.load_split(data_dir, CATS, "test")
    encode = lambda sk: np.stack([stats_code(s) for s in sk])  # noqa: E731

    def identity(run):
        def sample(reference):
            out = reference.select(np.arange(len(reference)))
            out.z = encode(reference)               # the code each sample was generated from
            return out
        return E.RunHooks(run.name, sample, encode)

    def swapped(run):                               # generates sketch i+1 for reference i
        def sample(reference):
            out = reference.select(np.roll(np.arange(len(reference)), -1))
            out.category = reference.category.copy()
            return out
        return E.RunHooks(run.name, sample, encode)

    hooks = {"ident": identity, "swap": swapped}
    res = E.compare_runs(["runs/ident", "runs/swap"], lambda p: hooks[p.name](p), ref, StatsJudge(),
                         config=FAST)
    rows = {r["set"]: r for r in res["rows"]}
    assert {k: rows["ident"][k] for k in ("ret@1", "ret@10", "ret@50")} == {
        "ret@1": 1.0, "ret@10": 1.0, "ret@50": 1.0}
    assert rows["swap"]["ret@1"] == 0.0 and rows["swap"]["ret@10"] == 1.0   # N = 10
    # identical sets: 0 up to the matrix square root's rounding (which varies with BLAS threads)
    assert rows["ident"]["fid"] == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(DataError, match="one per reference"):
        E.compare_runs(["r"], lambda p: E.RunHooks("r", lambda ref: ref.select([0])), ref,
                       StatsJudge(), config=FAST)


def test_markdown_table():
    res = {"rows": [{"set": "real test (reference)", "n": 10, "rec@1": 0.95, "is": 1.9},
                    {"set": "run", "n": 10, "rec@1": 0.5, "is": 1.2, "fid": 3.14159,
                     "precision": 0.5, "recall": 0.25, "gs_x1000": 12.0}]}
    assert E.markdown_table(res) == (
        "| set | N | Rec@1 | FID | IS | Prec | Recall | GS x1e3 |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
        "| real test (reference) | 10 | 0.950 | - | 1.90 | - | - | - |\n"
        "| run | 10 | 0.500 | 3.14 | 1.20 | 0.500 | 0.250 | 12.00 |\n")


# ------------------------------------------------------------------------------------------ CLI


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="sketchlab")
    commands.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def clf_dir(tmp_path):
    """An untrained judge's run directory, as the trainer writes it."""
    torch.manual_seed(0)
    path = tmp_path / "clf"
    model = SketchANet(Config(num_classes=len(CATS)))
    ckpt.write_run_config(path, SketchANet.name, model.config, 1.0, CATS)
    ckpt.save_weights(path / "model.safetensors", model, {"model": SketchANet.name, "step": 0})
    return path


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gudhi") is None,
                    reason="the Geometry Score needs gudhi (pip install gudhi, or sketchlab[metrics])")
def test_cli_evaluate_samples_file(tmp_path, data_dir, clf_dir, capsys):
    rng = np.random.default_rng(5)
    samples = Sketches.from_list([make_sketch(c, rng) for c in CATS for _ in range(4)],
                                 category=[1] * 4 + [0] * 4, category_names=("zigzag", "square"))
    samples.save(tmp_path / "samples.npz")
    out = tmp_path / "m.json"
    assert run_cli(["evaluate", str(tmp_path / "samples.npz"), "--classifier", str(clf_dir),
                    "--data-dir", str(data_dir), "--out", str(out), "--gs-runs", "2",
                    "--gs-workers", "1", "--device", "cpu", "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert [r["set"] for r in res["rows"]] == ["real test (reference)", "real valid", "samples"]
    assert [r["n"] for r in res["rows"]] == [8, 8, 8]                  # 4 per category everywhere
    assert res["protocol"]["feature_extractor"] == "sketch-a-net"
    table = (tmp_path / "m.md").read_text()
    assert table.startswith("| set | N | Rec@1 |") and table in capsys.readouterr().out
    for key in ("fid", "precision", "recall", "is", "gs_x1000", "rec@1"):
        assert np.isfinite(res["rows"][2][key])


def test_cli_evaluate_real_split_and_errors(tmp_path, data_dir, clf_dir):
    out = tmp_path / "real.json"
    assert run_cli(["evaluate", "real:valid", "--classifier", str(clf_dir), "--data-dir",
                    str(data_dir), "--out", str(out), "--no-gs", "--per-category", "4",
                    "--device", "cpu", "--quiet"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["set"] for r in rows] == ["real test (reference)", "real valid"]   # no duplicate row
    assert "gs_x1000" not in rows[1] and rows[1]["n"] == 8

    Sketches.from_list([make_sketch("square", np.random.default_rng(0))] * 4, category=0,
                       category_names=("circle",)).save(tmp_path / "circles.npz")
    with pytest.raises(DataError, match="circle"):
        run_cli(["evaluate", str(tmp_path / "circles.npz"), "--classifier", str(clf_dir),
                 "--data-dir", str(data_dir), "--out", str(out), "--device", "cpu", "--quiet"])
    other = tmp_path / "rnn"
    other.mkdir()
    (other / "config.json").write_text('{"model": "sketch-rnn"}')
    with pytest.raises(CheckpointError, match="'sketch-rnn' model, not 'sketch-a-net'"):
        run_cli(["evaluate", "real:valid", "--classifier", str(other), "--data-dir",
                 str(data_dir), "--out", str(out), "--device", "cpu"])


@pytest.mark.slow
def test_cli_classifier_train(tmp_path, data_dir):
    out = tmp_path / "clf"
    assert run_cli(["classifier", "train", "--data-dir", str(data_dir), "--categories",
                    "[square, zigzag]", "--out", str(out), "--epochs", "1", "--batch-size", "6",
                    "--max-steps", "1", "--width", "0.25", "--device", "cpu", "--quiet"]) == 0
    judge = runs.load_judge(out, device="cpu")
    assert judge.categories == CATS and judge.model.scale_factor > 0
    assert judge.config.width == 0.25 and judge.config.batch_size == 6
    assert (out / "best.safetensors").is_file() and (out / "log.csv").is_file()


def test_real_quickdraw_loader_through_load_split(tmp_path):
    """The adapter against the real loader (sketchlab.data.sources.load_categories)."""
    rng = np.random.default_rng(0)
    for cat in CATS:
        arrays = {}
        for split, n in SPLITS.items():
            arr = np.empty(n, dtype=object)
            for i in range(n):
                arr[i] = make_sketch(cat, rng).astype(np.int16)
            arrays[split] = arr
        np.savez(tmp_path / f"{cat}.npz", **arrays)
    sk = E.load_split(tmp_path, list(CATS), "test", 3)
    assert len(sk) == 6 and sk.category.tolist() == [0, 0, 0, 1, 1, 1]
