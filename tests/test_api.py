"""The public API: `sketchlab.load` over run directories, raw units in and out, capability errors."""

import numpy as np
import pytest

import sketchlab
from sketchlab.api import as_sketches
from sketchlab.cli import main
from sketchlab.data.sketches import Sketches
from sketchlab.data.sources import load_splits
from sketchlab.errors import ConfigError, DataError

TINY = {
    "sketch-rnn": "enc_rnn_size=8,dec_rnn_size=16,z_size=4,max_seq_len=40,batch_size=8,eval_every=0",
    "sketchgloc": "enc_rnn_size=8,dec_model=lstm,dec_rnn_size=16,z_size=4,batch_size=8,eval_every=0",
}


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    out = {}
    for model, hp in TINY.items():
        out[model] = root / model
        assert main(["train", model, "--categories", "star,fish", "--limit-per-category", "24",
                     "--out", str(out[model]), "--max-steps", "2", "--hparams", hp,
                     "--no-progress", "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def doodles():
    return load_splits(None, ["star", "fish"], limit_per_category=12)["test"]


def test_load_sample_encode_reconstruct_interpolate_complete(run_dirs, doodles):
    model = sketchlab.load(run_dirs["sketch-rnn"], device="cpu")
    assert model.name == "sketch-rnn" and model.categories == ["star", "fish"]
    assert {"can_sample", "can_encode", "can_complete"} <= model.capabilities
    samples = model.sample(3, seed=0)
    assert len(samples) == 3 and samples.scale_factor == 1.0
    again = model.sample(3, seed=0)
    assert np.array_equal(samples.points, again.points)              # seeded
    codes = model.encode(doodles[:4])
    assert codes.shape == (4, 4)
    redrawn = model.reconstruct(doodles[:4], seed=1)
    assert len(redrawn) == 4 and redrawn.category_names == doodles.category_names
    walk = model.interpolate(doodles[0], doodles[1], steps=5)
    assert len(walk) == 5
    prefix = Sketches.from_list([doodles[0][:6]])
    done = model.complete(prefix, n=2, seed=0)
    assert len(done) == 2
    for s in done:
        assert np.allclose(s[:6], prefix[0], atol=1e-3)             # starts with the prefix


def test_raw_units_in_and_out_whatever_units_the_input_carries(run_dirs, doodles):
    """Normalised sketches (scale_factor set) give the same codes as their raw originals: the
    handle converts by the units a Sketches carries, never misreads them."""
    model = sketchlab.load(run_dirs["sketch-rnn"], device="cpu")
    raw = doodles[:3]
    normalised = raw.in_units(model.scale_factor)
    assert normalised.scale_factor == model.scale_factor
    assert np.allclose(model.encode(raw), model.encode(normalised), atol=1e-5)
    # plain arrays and absolute strokes are raw units too
    assert np.allclose(model.encode(raw[0]), model.encode(raw[[0]]), atol=1e-6)
    strokes = Sketches.from_list([raw[0]]).to_strokes()[0]
    assert np.allclose(model.encode(strokes), model.encode(raw[[0]]), atol=1e-4)


def test_healing_models_heal_and_missing_capabilities_name_the_models_that_have_them(run_dirs, doodles):
    gloc = sketchlab.load(run_dirs["sketchgloc"], device="cpu")
    healed = gloc.heal(doodles[:3], strength=0.3, seed=0)
    assert len(healed) == 3
    with pytest.raises(ConfigError, match="cannot draw new sketches.*sketch-rnn.*sketchknitter"):
        gloc.sample(2)
    srnn = sketchlab.load(run_dirs["sketch-rnn"], device="cpu")
    with pytest.raises(ConfigError, match="cannot repair.*sp-gra2seq, sketchgloc, sketchknitter"):
        srnn.heal(doodles[:2])
    with pytest.raises(ConfigError, match="cannot continue.*sketch-rnn"):
        gloc.complete(doodles[:1])


def test_bad_inputs_are_clear_errors(run_dirs):
    model = sketchlab.load(run_dirs["sketch-rnn"], device="cpu")
    with pytest.raises(DataError, match="give Sketches"):
        as_sketches("not a sketch")
    with pytest.raises(DataError, match="no sketch"):
        model.encode(Sketches.from_list([]))
    with pytest.raises(DataError, match="NaN"):
        model.encode(np.array([[1.0, np.nan, 0.0], [1.0, 1.0, 1.0]], np.float32))
    with pytest.raises(ConfigError, match="steps=1"):
        model.interpolate(np.ones((3, 3), np.float32), np.ones((3, 3), np.float32), steps=1)
    with pytest.raises(ConfigError, match="neither a run directory nor a pretrained model"):
        sketchlab.load("no-such-model")


def test_save_by_extension(run_dirs, tmp_path):
    model = sketchlab.load(run_dirs["sketch-rnn"], device="cpu")
    samples = model.sample(2, seed=0)
    for ext in ("npz", "ndjson", "png", "svg"):
        assert sketchlab.save(samples, tmp_path / f"s.{ext}").is_file()
    assert np.allclose(Sketches.load(tmp_path / "s.npz").points, samples.points)
    back = Sketches.from_ndjson(tmp_path / "s.ndjson")
    assert len(back) == 2
    with pytest.raises(ConfigError, match="unknown format"):
        sketchlab.save(samples, tmp_path / "s.txt")


def test_corrupt_shows_what_heal_is_shown(run_dirs, doodles):
    """SketchGloc encodes exactly the sketch `corrupt` draws: its code under healing noise equals
    the plain code of the corrupted sketch."""
    gloc = sketchlab.load(run_dirs["sketchgloc"], device="cpu")
    refs = doodles[:4]
    moved = gloc.corrupt(refs, 0.3, seed=3)
    assert moved.lengths.tolist() == refs.lengths.tolist()
    assert not np.allclose(moved.points, refs.points)
    assert np.allclose(gloc.corrupt(refs, 0.0, seed=3).points, refs.points, atol=1e-3)
    module = gloc.module
    healed = module.generate(references=gloc._in(refs), seed=3, displacement=0.3, gallery="z")
    plain = module.generate(references=gloc._in(moved), seed=3, displacement=0.0, gallery="z")
    assert np.allclose(healed.z, plain.z, atol=1e-4)


def test_sketches_longer_than_a_model_takes_are_refused_by_index_not_dropped(run_dirs, doodles):
    model = sketchlab.load(run_dirs["sketch-rnn"], device="cpu")     # max_seq_len 40
    long = np.tile(np.array([[1.0, 0.0, 0.0]], np.float32), (60, 1))
    mixed = Sketches.from_list([doodles[0], long, doodles[1]])
    with pytest.raises(DataError, match=r"sketch 1 of 3 is longer than a sketch-rnn "
                                        r"model takes \(40 points\)"):
        model.encode(mixed)
