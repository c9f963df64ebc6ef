"""Reproduction mode: the `paper` and `cpu` presets of every model (`sketchlab.models.presets`,
`sketchlab train --preset`), what each sets, how --hparams combine with them, and the record in
config.json."""

import dataclasses
import json

import numpy as np
import pytest

from sketchlab.cli import main
from sketchlab.data.npz import save_sketchrnn_npz
from sketchlab.data.synthetic import make_doodle_splits
from sketchlab.errors import ConfigError
from sketchlab.models import MODELS, PRESETS, get_model_class, paper_categories, preset, presets

# The six sketch models (the registry also holds the evaluation's judge, sketch-a-net).
SKETCH_MODELS = ["sketch-rnn", "rpcl-pix2seq", "rpcl-pix2seqh", "sp-gra2seq", "sketchgloc",
                 "sketchknitter"]


def test_every_model_has_both_presets_of_its_own_config():
    assert set(PRESETS) == {"paper", "cpu"}
    for name in MODELS:
        cls = get_model_class(name)
        got = presets(name)
        assert set(got) == {"paper", "cpu"}
        for cfg in got.values():
            assert isinstance(cfg, cls.Config)
        # paper: float32 in training, validation and sampling (no bf16 autocast anywhere)
        assert got["paper"].amp is False, name
        assert got["cpu"].max_steps > 0, name          # bounded: it must finish within the hour
        assert bool(paper_categories(name)) == (name in SKETCH_MODELS), name
        # keyword overrides win over the preset
        assert preset(name, "paper", batch_size=7).batch_size == 7
    with pytest.raises(ConfigError, match="choose one of paper, cpu"):
        preset("sketch-rnn", "fast")


def test_paper_presets_carry_the_originals_quirks_and_sizes():
    srnn = preset("sketch-rnn", "paper")
    assert (srnn.enc_model, srnn.enc_rnn_size, srnn.dec_model, srnn.dec_rnn_size, srnn.z_size) == (
        "layer_norm", 512, "hyper", 2048, 128)
    assert srnn.max_seq_len == -1 and srnn.max_seq_len_cap == 0 and srnn.augment_stroke_prob == 0
    rpcl = preset("rpcl-pix2seq", "paper")
    assert rpcl.faithful_posterior and (rpcl.batch_size, rpcl.dec_rnn_size, rpcl.max_seq_len) == (200, 2048, -1)
    assert preset("rpcl-pix2seqh", "paper").rpcl_start == 100
    sp = preset("sp-gra2seq", "paper")
    assert sp.num_mixture == 50 and sp.scale_mode == "faithful" and sp.node_mask == "faithful"
    gloc = preset("sketchgloc", "paper")
    assert gloc.ret_query_shift and not gloc.clamp_stroke_len and gloc.stroke_pbias
    assert gloc.learning_rate == pytest.approx(9.999901e-4) and gloc.decay_rate == 1.0
    knit = preset("sketchknitter", "paper")
    assert knit.faithful and knit.pen_rule == "original" and not knit.ema_warms_up
    assert knit.checkpoint == "latest" and knit.clip == 1.0
    assert (knit.batch_size, knit.max_steps, knit.diffusion_steps, knit.num_res_blocks) == (4, 50001, 1000, 2)


def test_cpu_presets_run_without_recurrent_dropout():
    """No recurrent dropout, so the LSTMs run torch's native kernel on a CPU."""
    sizes = {"max_seq_len": 20, "max_stroke_len": 4, "max_stroke_num": 3}
    for name in SKETCH_MODELS:
        cls = get_model_class(name)
        cfg = preset(name, "cpu")
        fields = {f.name for f in dataclasses.fields(cfg)}
        cfg = dataclasses.replace(cfg, **{k: v for k, v in sizes.items() if k in fields and getattr(cfg, k) < 0})
        model = cls(cfg)
        for cell in (getattr(model, n, None) for n in ("decoder", "enc_fw", "enc_bw")):
            if cell is not None:
                assert cell.recurrent_dropout_keep == 1.0, name


def test_train_preset_cpu_with_hparams_on_top_is_recorded(tmp_path, capsys):
    run = tmp_path / "run"
    hp = "enc_rnn_size=8,dec_rnn_size=16,z_size=4,batch_size=8,eval_every=0"
    assert main(["train", "sketch-rnn", "--preset", "cpu", "--out", str(run), "--categories",
                 "star,fish", "--limit-per-category", "24", "--hparams", hp, "--max-steps", "2",
                 "--no-progress"]) == 0
    info = json.loads((run / "config.json").read_text())
    assert info["preset"] == "cpu"
    c = info["config"]
    assert (c["enc_rnn_size"], c["dec_rnn_size"], c["batch_size"]) == (8, 16, 8)     # --hparams win
    assert (c["kl_decay_rate"], c["use_recurrent_dropout"], c["max_seq_len_cap"]) == (0.999, False, 150)
    assert c["max_seq_len"] > 0                                                       # from the data
    assert f"max_seq_len {c['max_seq_len']}" in capsys.readouterr().out
    # resuming keeps the saved configuration, and says a different preset is ignored
    assert main(["train", "sketch-rnn", "--preset", "paper", "--out", str(run), "--max-steps", "3",
                 "--no-progress"]) == 0
    assert "--preset paper ignored" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["preset"] == "cpu"


def test_train_preset_paper_uses_the_originals_categories_and_float32(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    splits = make_doodle_splits(12, 4, 4, categories=["fish"])
    save_sketchrnn_npz(data / "aaron_sheep.npz", {k: list(v) for k, v in splits.items()})
    save_sketchrnn_npz(data / "other.npz", {k: list(v) for k, v in splits.items()})
    run = tmp_path / "run"
    hp = ("enc_model=lstm,enc_rnn_size=8,dec_model=lstm,dec_rnn_size=8,z_size=4,batch_size=4,"
          "eval_every=0")
    assert main(["train", "sketch-rnn", "--preset", "paper", "--data-dir", str(data), "--out",
                 str(run), "--hparams", hp, "--max-steps", "1", "--no-progress"]) == 0
    assert "the original's categories aaron_sheep" in capsys.readouterr().out
    info = json.loads((run / "config.json").read_text())
    assert info["preset"] == "paper" and info["categories"] == ["aaron_sheep"]
    assert info["config"]["amp"] is False and info["config"]["random_scale_factor"] == 0.15


def test_help_names_the_presets_and_the_reconstructed_shortcut(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--preset {paper,cpu}" in text and "float32" in text and "reconstruction" in text
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "sketchlab's reconstruction" in text and "--pen-decoding" in text
