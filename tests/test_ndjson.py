"""QuickDraw ndjson -> sketch-rnn npz: one drawing, whole imports, the command line."""

import json

import numpy as np
import pytest

from npz_samples import run_cli
from sketchlab.data import ndjson
from sketchlab.data.ndjson import detect_format, drawing_to_stroke3, import_ndjson
from sketchlab.data.npz import SPLITS, load_npz, load_npz_split, read_npz_array, save_sketchrnn_npz
from sketchlab.data.sources import load_categories
from sketchlab.data.strokes import BadDrawing
from sketchlab.errors import ConfigError, DataError
from sketchlab.fileio import atomic_open


# ============================================================================================
# RDP and drawing conversion
# ============================================================================================


def test_simplified_drawing_only_becomes_relative():
    drawing = [[[10, 20, 20], [0, 0, 30]], [[50, 60], [40, 40]]]
    s3 = drawing_to_stroke3(drawing, "simplified")
    assert s3.dtype == np.int16
    assert s3.tolist() == [[10, 0, 0], [10, 0, 0], [0, 30, 1], [30, 10, 0], [10, 0, 1]]


def test_raw_drawing_is_aligned_scaled_simplified_and_rounded():
    # Top-left (10, 5); longest side 20 -> x 12.75: (0, 0), (127.5, 0), (255, 255). The middle
    # point is 90 px off the diagonal, so RDP keeps it; 127.5 rounds to 128 (half to even).
    drawing = [[[10.0, 20.0, 30.0], [5.0, 5.0, 25.0], [0, 16, 33]]]
    s3 = drawing_to_stroke3(drawing, "raw")
    assert s3.tolist() == [[0, 0, 0], [128, 0, 0], [127, 255, 1]]
    # Timestamps are ignored: shuffled (non-monotone) ones give the same sketch.
    shuffled = [[[10.0, 20.0, 30.0], [5.0, 5.0, 25.0], [33, 0, 16]]]
    assert np.array_equal(drawing_to_stroke3(shuffled, "raw"), s3)
    # A dense straight raw stroke collapses to its two ends.
    xs = np.linspace(3.0, 40.0, 200).tolist()
    line = drawing_to_stroke3([[xs, [7.0] * 200, list(range(200))]], "raw")
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
    with pytest.raises(BadDrawing, match=reason):
        drawing_to_stroke3(drawing, "simplified", max_points=30)


def test_format_detection():
    assert detect_format({"word": "cat", "drawing": [[[1], [2]]]}) == "simplified"
    assert detect_format({"word": "cat", "drawing": [[[1], [2], [0]]]}) == "raw"
    assert detect_format({"i": 3, "key_id": "1", "drawing": [[[1], [2], [0], [0]]]}) == "spg"


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
    report = import_ndjson([simplified_dir], out, max_points=200, progress=False)
    cat = report["categories"]["cat"]
    assert (cat["train"], cat["valid"], cat["test"]) == (36, 2, 2)   # 40 * 0.05 = 2
    assert cat["dropped"] == {"duplicate key_id": 1, "empty drawing": 1, "single point": 1,
                              "xs/ys lengths differ": 1, "NaN or inf coordinates": 1,
                              "too many points": 1}
    assert report["dropped"]["invalid JSON"] == 1 and report["lines_read"] == 57
    assert report["formats"] == {"simplified": 50} and report["imported"] == 50
    assert json.loads((out / "import_report.json").read_text())["imported"] == 50
    data = load_npz(out / "cat.npz")
    keys = {s: read_npz_array(out / "cat.npz", f"{s}_key_ids").tolist() for s in SPLITS}
    everything = keys["train"] + keys["valid"] + keys["test"]
    assert sorted(everything) == [str(1000 + i) for i in range(40)]
    # The first sketch of key 1003 was kept (the duplicate with offset 99 was dropped).
    where = [(s, keys[s].index("1003")) for s in SPLITS if "1003" in keys[s]][0]
    assert data[where[0]][where[1]][0].tolist() == [3, 3, 0]
    assert data["train"].points.dtype == np.float32
    prov = json.loads(str(read_npz_array(out / "cat.npz", "sketchlab_import")))
    assert prov["test_carved_from_train"] == 0 and "seeded" in prov["split_source"]
    # Same seed -> same split; another seed -> another one.
    again = import_ndjson([simplified_dir], tmp_path / "again", max_points=200, progress=False)
    assert again["categories"]["cat"]["train"] == 36
    again_valid = read_npz_array(tmp_path / "again" / "cat.npz", "valid_key_ids").tolist()
    assert again_valid == keys["valid"]
    other = import_ndjson([simplified_dir], tmp_path / "other", max_points=200, seed=5,
                             progress=False)
    assert other["categories"]["cat"]["valid"] == 2
    assert (read_npz_array(tmp_path / "other" / "cat.npz", "valid_key_ids").tolist()
            != keys["valid"])


def test_import_category_filter_and_unknown_category(tmp_path, simplified_dir):
    report = import_ndjson([simplified_dir], tmp_path / "o", categories=["DOG"], progress=False)
    assert list(report["categories"]) == ["dog"]
    assert not (tmp_path / "o" / "cat.npz").exists()
    with pytest.raises(DataError, match=r"unknown category bird; the sources hold: cat, dog"):
        import_ndjson([simplified_dir], tmp_path / "o2", categories=["dog", "bird"],
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
    report = import_ndjson([tmp_path / "line.ndjson"], tmp_path / "o", progress=False)
    assert report["formats"] == {"raw": 4}
    sketch = load_npz(tmp_path / "o" / "line.npz")["train"][0]
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
    report = import_ndjson([src], tmp_path / "o", progress=False)
    ant = report["categories"]["ant"]
    assert (ant["train"], ant["valid"], ant["test"]) == (20, 5, 5)
    assert ant["test_carved_from_train"] == 5 and ant["split_source"].endswith("splits.json")
    path = tmp_path / "o" / "ant.npz"
    valid = read_npz_array(path, "valid_key_ids").tolist()
    test = read_npz_array(path, "test_key_ids").tolist()
    assert valid == [f"k{i}" for i in range(25, 30)]
    assert set(test) <= {f"k{i}" for i in range(25)}
    # Dense SPG strokes went through RDP: each straight run is 2 points.
    sketch = load_npz_split(path, "train")[0]
    assert sketch.tolist() == [[0, 10, 0], [200, 0, 1], [0, 0, 0], [0, 190, 1]]
    provenance = json.loads(str(read_npz_array(path, "sketchlab_import")))
    assert provenance["test_carved_from_train"] == 5
    # --splits none: the seeded split instead, nothing carved.
    plain = import_ndjson([src], tmp_path / "p", splits_file=None, progress=False)
    assert plain["categories"]["ant"]["test_carved_from_train"] == 0


def test_import_keeps_earlier_files_when_a_later_write_fails(tmp_path, simplified_dir, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dog.npz").write_bytes(b"old dog file")
    real = save_sketchrnn_npz

    def failing(path, *a, **kw):
        if str(path).endswith("dog.npz"):
            with atomic_open(path) as fh:
                fh.write(b"half a file")
                raise OSError("disk full")
        return real(path, *a, **kw)

    monkeypatch.setattr(ndjson, "save_sketchrnn_npz", failing)
    with pytest.raises(OSError):
        import_ndjson([simplified_dir], out, max_points=200, progress=False)
    assert len(load_npz(out / "cat.npz")["train"]) == 36   # written before the failure
    assert (out / "dog.npz").read_bytes() == b"old dog file"  # not torn
    assert sorted(p.name for p in out.iterdir()) == ["cat.npz", "dog.npz"]  # no temp files


def test_import_option_errors(tmp_path, simplified_dir):
    with pytest.raises(ConfigError):
        import_ndjson([simplified_dir], tmp_path / "o", fmt="svg")
    with pytest.raises(ConfigError):
        import_ndjson([simplified_dir], tmp_path / "o", split=(0, 0.5, 0.5))
    with pytest.raises(DataError, match="no such file"):
        import_ndjson([tmp_path / "nope.ndjson"], tmp_path / "o")


def test_cli_import(simplified_dir, tmp_path, monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "data", "import", str(simplified_dir), "--out",
                            str(tmp_path / "o"), "--max-points", "200", "--quiet",
                            "--split", "0.8,0.1,0.1")
    assert code == 0 and "50 sketches imported" in out and "dropped:" in out
    assert load_npz(tmp_path / "o" / "cat.npz")["valid"].offsets.size == 5  # 4 sketches
    code, _, err = run_cli(monkeypatch, capsys, "data", "import", str(simplified_dir), "--out",
                            str(tmp_path / "o"), "--categories", "emu", "--quiet")
    assert code == 2 and "unknown category emu" in err


# ============================================================================================
# Real data (../shared/data)
# ============================================================================================


@pytest.mark.realdata
def test_real_spg_import_two_categories(shared_data, tmp_path):
    spg = shared_data / "spg20"
    report = import_ndjson([spg / "ant.ndjson", spg / "candle.ndjson"], tmp_path / "o",
                              progress=False)
    splits = json.loads((spg / "splits.json").read_text())
    for cat in ("ant", "candle"):
        entry = report["categories"][cat]
        assert (entry["train"], entry["valid"], entry["test"]) == (600, 50, 50)
        assert entry["test_carved_from_train"] == 50 and entry["dropped"] == {}
        assert 20 < entry["mean_length"] < 90 and entry["max_length"] < 300
        path = tmp_path / "o" / f"{cat}.npz"
        assert sorted(read_npz_array(path, "valid_key_ids").tolist()) == sorted(
            str(k) for k in splits[cat]["valid"])
        assert set(read_npz_array(path, "test_key_ids").tolist()) <= {
            str(k) for k in splits[cat]["train"]}
    data = load_categories(tmp_path / "o", ["ant", "candle"])
    assert len(data["train"]) == 1200 and data["train"].category_names == ("ant", "candle")


@pytest.mark.realdata
def test_real_simplified_import_keeps_every_point(shared_data, tmp_path):
    src = shared_data / "quickdraw-simplified"
    files = [src / "The Eiffel Tower.ndjson", src / "cat.ndjson"]
    report = import_ndjson(files, tmp_path / "o", progress=False)
    assert sorted(report["categories"]) == ["The Eiffel Tower", "cat"]
    lines = [json.loads(line) for line in files[1].read_text().splitlines()]
    points = {str(o["key_id"]): sum(len(s[0]) for s in o["drawing"]) for o in lines}
    data = load_npz(tmp_path / "o" / "cat.npz")
    for split in SPLITS:
        keys = read_npz_array(tmp_path / "o" / "cat.npz", f"{split}_key_ids").tolist()
        assert [points[k] for k in keys] == data[split].lengths.tolist()
    assert sum(report["categories"]["cat"][s] for s in SPLITS) == 25


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
    kept = import_ndjson([tmp_path / "zig.ndjson.gz"], tmp_path / "a", splits_file=splits,
                            progress=False)
    assert (kept["categories"]["zig"]["train"], kept["categories"]["zig"]["test"]) == (3, 2)
    assert kept["categories"]["zig"]["test_carved_from_train"] == 0
    assert load_npz_split(tmp_path / "a" / "zig.npz", "train").lengths.tolist() == [6] * 3
    forced = import_ndjson([tmp_path / "zig.ndjson.gz"], tmp_path / "b", fmt="spg",
                              splits_file=splits, progress=False)
    assert forced["formats"] == {"spg": 6}
    assert load_npz_split(tmp_path / "b" / "zig.npz", "test")[0].tolist() == [
        [0, 0, 0], [10, 0, 0], [30, 30, 1]]


def test_cli_data_without_subcommand_prints_help(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "data")
    assert code == 1 and "import" in out and "download" in out and "info" in out


# ============================================================================================
# Parallel import: the same npz files bit for bit
# ============================================================================================


def _import_outputs(out):
    report = json.loads((out / "import_report.json").read_text())
    for key in ("out", "seconds", "processes", "convert_cpu_seconds"):
        report.pop(key)
    return report, {p.name: p.read_bytes() for p in sorted(out.glob("*.npz"))}


@pytest.mark.parametrize("fmt_dir", ["simplified", "mixed"])
def test_parallel_import_is_bit_identical_to_one_process(tmp_path, simplified_dir, fmt_dir):
    import gzip

    if fmt_dir == "mixed":  # + a gzip file (one chunk) and raw lines through RDP
        raw = [json.dumps({"word": "cat", "key_id": f"r{i}", "drawing": [
            [[0, 5, 9, 30 + i, 60], [0, 1, 0, 20, 2 * i], [0, 10, 20, 30, 40]]]}) for i in range(30)]
        raw.append(json.dumps({"word": "cat", "key_id": "1003", "drawing": _square(5)}))  # dup
        with gzip.open(simplified_dir / "more.ndjson.gz", "wt") as fh:
            fh.write("\n".join(raw) + "\n")
    one = import_ndjson([simplified_dir], tmp_path / "one", max_points=200, progress=False,
                        processes=1, chunk_bytes=700)
    # Chunks of ~700 bytes cut the plain files into many pieces (duplicates, bad lines and
    # blank lines fall into different chunks from their twins); 2 workers convert them.
    two = import_ndjson([simplified_dir], tmp_path / "two", max_points=200, progress=False,
                        processes=2, chunk_bytes=700)
    assert one["processes"] == 1 and two["processes"] == 2
    assert _import_outputs(tmp_path / "one") == _import_outputs(tmp_path / "two")
    whole = import_ndjson([simplified_dir], tmp_path / "whole", max_points=200, progress=False)
    assert _import_outputs(tmp_path / "whole") == _import_outputs(tmp_path / "two")
    assert one["dropped_examples"]["invalid JSON"] == [f"{simplified_dir / 'cat.ndjson'}:47"]


@pytest.mark.realdata
def test_real_spg_parallel_import_is_bit_identical(shared_data, tmp_path):
    files = [shared_data / "spg20" / f"{c}.ndjson" for c in ("ant", "candle", "pig")]
    import_ndjson(files, tmp_path / "one", progress=False, processes=1)
    import_ndjson(files, tmp_path / "two", progress=False, processes=2, chunk_bytes=300_000)
    assert _import_outputs(tmp_path / "one") == _import_outputs(tmp_path / "two")


def test_import_processes_option_errors(tmp_path, simplified_dir):
    with pytest.raises(ConfigError, match="processes"):
        import_ndjson([simplified_dir], tmp_path / "o", processes=0)
