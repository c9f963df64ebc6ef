"""Folders of sketch-rnn npz files (load_categories), the category parser, and `data info`."""

import json

import numpy as np
import pytest

from npz_samples import SK_A, SK_B, SK_C, run_cli
from sketchlab.data.catalog import describe_npz
from sketchlab.data.npz import save_sketchrnn_npz
from sketchlab.data.sources import load_categories, parse_categories
from sketchlab.errors import ConfigError, DataError


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    save_sketchrnn_npz(d / "cat.npz", {"train": [SK_A, SK_B, SK_C], "valid": [SK_B],
                                          "test": [SK_C, SK_A]})
    save_sketchrnn_npz(d / "dog.npz", {"train": [SK_C, SK_C], "valid": [SK_A, SK_A],
                                          "test": [SK_B]})
    return d


def test_load_categories_concatenates_in_order_with_limit(data_dir):
    data = load_categories(data_dir, "dog,cat", limit_per_category=2)
    train = data["train"]
    assert train.category_names == ("dog", "cat")
    assert train.category.tolist() == [0, 0, 1, 1]
    assert [len(s) for s in train] == [len(SK_C), len(SK_C), len(SK_A), len(SK_B)]
    assert data["valid"].category.tolist() == [0, 0, 1]
    assert data["test"].category.tolist() == [0, 1, 1]
    only = load_categories(data_dir, ["cat"], splits=("valid",))
    assert list(only) == ["valid"] and len(only["valid"]) == 1


def test_load_categories_unknown_lists_folder(data_dir):
    with pytest.raises(DataError, match=r"no bird\.npz.*2 categories: cat, dog"):
        load_categories(data_dir, ["cat", "bird"])
    with pytest.raises(ConfigError):
        load_categories(data_dir, ["cat", "cat"])


def test_describe_npz_matches_hand_computed_numbers(data_dir):
    info = describe_npz(data_dir / "cat.npz")
    train = info["splits"]["train"]
    assert train["count"] == 3
    assert train["length"]["max"] == 5 and train["length"]["p50"] == 4.0
    assert train["strokes"]["max"] == 2
    assert train["strokes"]["mean"] == pytest.approx(4 / 3, abs=0.01)
    xy = np.concatenate([SK_A, SK_B, SK_C])[:, :2].astype(np.float64)
    assert info["scale_factor"] == pytest.approx(xy.std(), abs=1e-4)


def test_cli_info_table_and_json(data_dir, monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "data", "info", str(data_dir))
    assert code == 0 and "cat.npz" in out and "dog.npz" in out and "scale factor" in out
    code, out, _ = run_cli(monkeypatch, capsys, "data", "info", str(data_dir / "cat.npz"),
                            "--json")
    assert json.loads(out)["splits"]["test"]["count"] == 2
    code, _, err = run_cli(monkeypatch, capsys, "data", "info", str(data_dir / "nope.npz"))
    assert code == 2 and "no such file" in err


# ============================================================================================
# The category parser (every --categories, --hparams categories=..., load_categories)
# ============================================================================================


@pytest.mark.parametrize("value, names", [
    ("cat,bus", ["cat", "bus"]),
    ("[bee, bus]", ["bee", "bus"]),                      # the originals' hparams spelling
    ("{'bee','bus'}", ["bee", "bus"]),
    (" ' alarm clock ' , \"The Mona Lisa\" ", ["alarm clock", "The Mona Lisa"]),
    ("a,,b,", ["a", "b"]),
    (["cat", " 'dog' ", ""], ["cat", "dog"]),
    (("cat",), ["cat"]),
    (None, []),                                          # not given: the caller decides
])
def test_parse_categories_spellings(value, names):
    assert parse_categories(value) == names


@pytest.mark.parametrize("value, message", [
    ("", r"--categories '' names no category"),
    ("[]", r"--categories '\[\]' names no category"),
    ([" ", ""], r"--categories \[' ', ''\] names no category"),
    ("cat,dog,cat", r"--categories: category listed twice: cat"),
    (["cat", 3], r"--categories: category names must be strings, got 3"),
])
def test_parse_categories_refusals_name_the_flag(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_categories(value)
    with pytest.raises(ConfigError, match=message.replace("--categories", "--hparams categories")):
        parse_categories(value, flag="--hparams categories")


def test_load_categories_reads_the_originals_spelling(data_dir):
    data = load_categories(data_dir, "[dog, 'cat']", splits=("test",))
    assert data["test"].category_names == ("dog", "cat") and len(data["test"]) == 3
    with pytest.raises(ConfigError, match="no categories given"):
        load_categories(data_dir, None)
