"""What a newcomer meets on the command line: honest evaluation (categories checked, unconditional
samples scored, references a model cannot take counted), pictures that show their inputs, sample
outputs, errors that name flags, progress in logs, `--list-hparams`, help texts and category hints.

Runs are tiny untrained models written straight into run directories, the judge an untrained
narrow Sketch-a-Net, the data two categories of a few sketches: every command runs in seconds.
"""

import argparse
import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

import raster_standin
from sketchlab import cli, progress
from sketchlab.config import TrainingConfig, apply_hparams, field_help
from sketchlab.data.npz import save_sketchrnn_npz
from sketchlab.data.sketches import Sketches
from sketchlab.eval import evaluate as E
from sketchlab.models import get_model_class, model_classes
from sketchlab.models.sketch_a_net import Config as JudgeConfig
from sketchlab.models.sketch_a_net import SketchANet
from sketchlab.render import CORRUPTED_COLOUR, INPUT_COLOUR
from sketchlab.train import checkpoint as ckpt

raster_standin.install()

CATS = ("square", "zigzag")
SVG = "{http://www.w3.org/2000/svg}"


def make_sketch(cat: str, size: float, points: int) -> np.ndarray:
    if cat == "square":
        return np.array([[0, 0, 0], [size, 0, 0], [0, size, 0], [-size, 0, 0], [0, -size, 1]],
                        np.float32)
    rows = [[0, 0, 0]] + [[4.0, size if i % 2 == 0 else -size, 0] for i in range(points - 1)]
    rows[-1][2] = 1
    return np.array(rows, np.float32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data (squares of 5 points, zigzags of 5 to 9), a judge, and runs of four kinds."""
    root = tmp_path_factory.mktemp("world")
    data = root / "data"
    data.mkdir()
    sizes = iter(range(5, 1000))
    for cat in CATS:
        save_sketchrnn_npz(data / f"{cat}.npz", {
            split: [make_sketch(cat, float(next(sizes)), 5 + i % 5) for i in range(n)]
            for split, n in {"train": 6, "valid": 5, "test": 5}.items()})
    torch.manual_seed(0)
    judge = SketchANet(JudgeConfig(num_classes=len(CATS), width=0.25))
    ckpt.write_run_config(root / "clf", SketchANet.name, judge.config, 1.0, CATS)
    ckpt.save_weights(root / "clf" / "model.safetensors", judge, {"model": SketchANet.name})
    rnn = ("enc_rnn_size=8,dec_rnn_size=16,z_size=4,num_mixture=2,max_seq_len=40,"
           "use_recurrent_dropout=0")
    write_run(root / "rnn", "sketch-rnn", rnn, CATS, data)
    write_run(root / "other", "sketch-rnn", rnn, ("circle", "triangle"), data)
    write_run(root / "uncond", "sketch-rnn", rnn + ",conditional=0", CATS, data)
    # num_points 6: zigzags of 7 to 9 points are more than this SketchKnitter takes.
    write_run(root / "knit", "sketchknitter", "num_points=6,layout=sequence,model_channels=32,"
              "lift_dim=8,channel_mult=[1],num_res_blocks=1,num_heads=1,diffusion_steps=40", CATS,
              data)
    return root


def write_run(path, model: str, hparams: str, categories, data_dir) -> None:
    """An untrained model's run directory, as the trainer writes it."""
    cls = get_model_class(model)
    torch.manual_seed(0)
    cfg = apply_hparams(cls.Config(), hparams)
    m = cls(cfg)
    if hasattr(m, "set_data_stats"):                  # SketchKnitter draws lengths from its data
        m.set_data_stats(4.0, [4, 5, 6])
    ckpt.write_run_config(path, model, cfg, 4.0, list(categories),
                          extra={"data_dir": str(data_dir), "limit_per_category": None})
    ckpt.save_weights(path / "model.safetensors", m, {"model": model, "step": 0})


def sketchlab(*argv) -> int:
    return cli.main([str(a) for a in argv])


def err_of(capsys) -> str:
    return capsys.readouterr().err


# ---------------------------------------------------------------------------- evaluation


def test_compare_refuses_runs_of_other_categories(world, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert sketchlab("compare", world / "rnn", world / "other", "--classifier", world / "clf",
                     "--data-dir", world / "data", "--out", out, "--device", "cpu") == 2
    err = err_of(capsys)
    assert "other: trained on circle, triangle, not on square, zigzag" in err
    assert "--allow-category-mismatch" in err and not out.exists()


def test_compare_marks_mismatch_scores_unconditional_and_skips_long_references(world, tmp_path,
                                                                              capsys):
    out = tmp_path / "t.json"
    assert sketchlab("compare", world / "rnn", world / "other", world / "uncond", world / "knit",
                     "--classifier", world / "clf", "--data-dir", world / "data", "--out", out,
                     "--no-gs", "--device", "cpu", "--quiet", "--allow-category-mismatch") == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    rows = {r["set"]: r for r in res["rows"]}
    # the zigzags of 7-9 points: knit cannot take them, so no run is asked about them
    assert res["protocol"]["skipped_references"]["knit"]["references"] == 3
    assert "3 of 10 references left out for every run" in printed
    assert all(rows[name]["n"] == 7 for name in ("rnn", "other", "uncond", "knit"))
    assert "category_mismatch" in rows["other"] and "category_mismatch" not in rows["rnn"]
    table = (tmp_path / "t.md").read_text()
    assert "| other * |" in table and "categories do not match" in table
    # the unconditional run: recognised as any of its categories, and what the judge saw
    assert "rec@1" not in rows["uncond"] and 0 <= rows["uncond"]["rec_any@1"] <= 1
    assert sum(rows["uncond"]["class_histogram"].values()) == 7
    assert "uncond: unconditional samples" in table
    assert rows["knit"]["rec@1"] >= 0                 # SketchKnitter's samples carry categories


def test_evaluate_unconditional_samples_and_the_runs_categories(world, tmp_path, capsys):
    raw = [make_sketch(c, 5.0 + i, 5) for i, c in enumerate(CATS * 3)]
    free = Sketches.from_list(raw, category_names=CATS)          # what `sample` writes for them
    free.save(tmp_path / "free.npz")
    out = tmp_path / "m.json"
    common = ["--classifier", world / "clf", "--data-dir", world / "data", "--out", out, "--no-gs",
              "--device", "cpu", "--quiet"]
    assert sketchlab("evaluate", tmp_path / "free.npz", *common) == 0
    row = json.loads(out.read_text())["rows"][-1]
    assert row["n"] == 6 and "rec_any@1" in row and sum(row["class_histogram"].values()) == 6
    assert json.loads(out.read_text())["rows"][0]["n"] == 6    # 3 real squares, 3 real zigzags
    capsys.readouterr()
    assert sketchlab("evaluate", tmp_path / "free.npz", "--run", world / "other", *common) == 2
    assert "categories do not match" in err_of(capsys)
    assert sketchlab("evaluate", tmp_path / "free.npz", "--run", world / "other", *common,
                     "--allow-category-mismatch") == 0
    assert json.loads(out.read_text())["rows"][-1]["category_mismatch"]
    # samples with no category at all: --run says what they were drawn from
    Sketches.from_list(raw).save(tmp_path / "bare.npz")
    assert sketchlab("evaluate", tmp_path / "bare.npz", "--run", world / "uncond", *common) == 0
    assert "rec_any@1" in json.loads(out.read_text())["rows"][-1]


def test_fid_never_prints_minus_zero():
    res = {"rows": [{"set": "copy", "n": 3, "fid": -1e-9, "precision": 1.0}]}
    assert "| copy | 3 | 0.00 | 1.000 |" in E.markdown_table(res)
    from sketchlab.eval.metrics import frechet_distance
    s = np.array([[2.0, 0.3], [0.3, 1.0]])
    assert frechet_distance(np.ones(2), s, np.ones(2), s) >= 0.0


# ---------------------------------------------------------------------------- sample


def test_sample_counts_the_references_a_model_cannot_take(world, tmp_path, capsys):
    assert sketchlab("sample", world / "knit", "--condition-on", "test", "--out",
                     tmp_path / "k.npz", "--sampler", "ddim", "--steps", "4", "--device", "cpu",
                     "--quiet") == 0
    assert "3 of 10 sketches left out (sketchknitter takes sketches of 1 to 6 points" in \
        capsys.readouterr().out
    healed = Sketches.load(tmp_path / "k.npz")
    assert len(healed) == 7 and healed.category_names == CATS and healed.category is not None
    # free SketchKnitter samples of a two-category run carry the categories they come from
    assert sketchlab("sample", world / "knit", "--n", 3, "--out", tmp_path / "f.npz", "--sampler",
                     "ddim", "--steps", "4", "--device", "cpu", "--quiet") == 0
    free = Sketches.load(tmp_path / "f.npz")
    assert free.category is None and free.category_names == CATS


def test_sample_out_picture_keeps_the_samples_beside_it(world, tmp_path, capsys):
    assert sketchlab("sample", world / "rnn", "--n", 4, "--out", tmp_path / "s.png",
                     "--device", "cpu") == 0
    assert len(Sketches.load(tmp_path / "s.npz")) == 4
    assert Image.open(tmp_path / "s.png").format == "PNG"
    assert sketchlab("sample", world / "rnn", "--n", 4, "--out", tmp_path / "s.txt") == 2
    assert "give the samples' file, FILE.npz" in err_of(capsys)


def test_errors_name_the_flags(world, tmp_path, capsys):
    assert sketchlab("sample", world / "rnn", "--out", tmp_path / "x.npz", "--temperature", 0) == 2
    assert "--greedy" in err_of(capsys)
    assert sketchlab("sample", world / "knit", "--out", tmp_path / "x.npz", "--sampler",
                     "rshortcut") == 2
    err = err_of(capsys)
    assert "--classifier" in err and "--calibration-sketches" in err
    # 30 steps out of T = 40 with an integer stride: impossible
    assert sketchlab("sample", world / "knit", "--out", tmp_path / "x.npz", "--sampler", "ddim",
                     "--steps", 30) == 2
    assert "--spacing even" in err_of(capsys)
    assert sketchlab("train", "sketch-rnn", "--out", tmp_path / "r", "--hparams",
                     "lerning_rate=1") == 2
    err = err_of(capsys)
    assert "did you mean learning_rate" in err and "--list-hparams" in err


# ---------------------------------------------------------------------------- pictures


def picture(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def has_colour(img: np.ndarray, hex_colour: str) -> bool:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return bool((np.abs(img - rgb).sum(-1) < 30).any())


def test_pictures_show_what_the_samples_were_drawn_from(world, tmp_path):
    n = 4
    common = ["--n", n, "--device", "cpu", "--quiet"]
    assert sketchlab("sample", world / "rnn", "--out", tmp_path / "free.png", *common) == 0
    assert sketchlab("sample", world / "rnn", "--condition-on", "test", "--out",
                     tmp_path / "cond.png", *common) == 0
    assert sketchlab("sample", world / "knit", "--condition-on", "test", "--out",
                     tmp_path / "heal.png", "--sampler", "ddim", "--steps", 4, *common) == 0
    free, cond, heal = (picture(tmp_path / f"{k}.png") for k in ("free", "cond", "heal"))
    # each output has its input above it (and, healing, the corrupted input in between)
    assert cond.shape[0] > free.shape[0] and heal.shape[0] > cond.shape[0]
    assert has_colour(cond, INPUT_COLOUR) and not has_colour(free, INPUT_COLOUR)
    assert has_colour(heal, CORRUPTED_COLOUR) and not has_colour(cond, CORRUPTED_COLOUR)
    # the words: inputs by category, outputs as outputs; free samples captioned
    assert sketchlab("sample", world / "rnn", "--out", tmp_path / "free.svg", *common,
                     "--temperature", 0.4) == 0
    assert sketchlab("sample", world / "rnn", "--condition-on", "test", "--out",
                     tmp_path / "cond.svg", *common) == 0
    free_text = " ".join(t.text for t in ET.parse(tmp_path / "free.svg").iter(f"{SVG}text"))
    assert "sketch-rnn" in free_text and "rnn" in free_text and "temperature 0.4" in free_text
    cond_texts = [t.text for t in ET.parse(tmp_path / "cond.svg").iter(f"{SVG}text")]
    assert cond_texts.count("output") == n and cond_texts.count("square") == n


def test_data_grids_name_their_category(world, tmp_path):
    assert sketchlab("render", world / "data" / "zigzag.npz", "--out", tmp_path / "d.svg",
                     "--titles", "--n", 4) == 0
    texts = [t.text for t in ET.parse(tmp_path / "d.svg").iter(f"{SVG}text")]
    assert texts.count("zigzag") == 4 and not any(t.startswith("#") for t in texts)
    assert "zigzag.npz, test split: zigzag" in " ".join(texts)


# ---------------------------------------------------------------------------- progress


def test_progress_prints_lines_not_bars_into_logs(capsys):
    import io

    log = io.StringIO()
    with progress.Progress(4, "sampling", "steps", stream=log, every=0) as bar:
        for _ in range(4):
            bar.update(1, loss=0.5)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 5
    assert re.match(r"sampling: 1/4 steps \(25%\), .* elapsed, ETA \d+:\d\d, loss=0.5$", lines[0])
    assert lines[-1].startswith("sampling: done, 4 steps in ")
    quiet_log = io.StringIO()
    with progress.quiet():
        assert list(progress.track(range(3), every=0)) == [0, 1, 2]
        bar = progress.Progress(3, stream=quiet_log, every=0)
        bar.update(3)
        bar.close()
    assert quiet_log.getvalue() == "" and capsys.readouterr().err == ""
    assert not progress.is_quiet()


def test_long_commands_report_progress_in_logs_and_quiet_silences_them(world, tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.setenv("SKETCHLAB_PROGRESS_EVERY", "0")
    assert sketchlab("sample", world / "knit", "--n", 2, "--out", tmp_path / "a.npz", "--sampler",
                     "ddpm", "--device", "cpu") == 0
    err = err_of(capsys)
    assert "sampling: 40/40 steps (100%)" in err and "ETA" in err and "\r" not in err
    assert sketchlab("sample", world / "knit", "--n", 2, "--out", tmp_path / "a.npz", "--sampler",
                     "ddpm", "--device", "cpu", "--quiet") == 0
    assert "sampling" not in err_of(capsys)
    assert sketchlab("train", "sketch-rnn", "--out", tmp_path / "run", "--max-steps", 2,
                     "--limit-per-category", 8, "--hparams", "enc_rnn_size=8,dec_rnn_size=8,"
                     "z_size=4,num_mixture=2,batch_size=4,max_seq_len=60,eval_every=2,"
                     "use_recurrent_dropout=0", "--device", "cpu") == 0
    captured = capsys.readouterr()
    assert "sketch-rnn: 2/2 steps (100%)" in captured.err and "\r" not in captured.err


def test_calibration_has_a_size_and_reports_progress(world, tmp_path, capsys, monkeypatch):
    import shutil

    run = tmp_path / "knit"
    shutil.copytree(world / "knit", run)
    monkeypatch.setenv("SKETCHLAB_PROGRESS_EVERY", "0")
    assert sketchlab("sample", run, "--n", 2, "--out", tmp_path / "r.npz", "--sampler",
                     "rshortcut", "--steps", 4, "--classifier", world / "clf",
                     "--calibration-sketches", 2, "--device", "cpu") == 0
    captured = capsys.readouterr()
    assert "2 + 1 sampling chains of 40 steps" in captured.out
    assert "sampling: 40/40 steps" in captured.err and "recognizer: " in captured.err
    assert len(Sketches.load(tmp_path / "r.npz")) == 2


# ---------------------------------------------------------------------------- help and hints


def test_list_hparams_shows_every_field_with_default_and_meaning(capsys):
    for name, cls in model_classes().items():
        helps = field_help(cls.Config)
        assert all(helps.values()), (name, [k for k, v in helps.items() if not v])
        assert sketchlab("train", name, "--list-hparams") == 0
        out = capsys.readouterr().out
        for f in cls.Config.__dataclass_fields__.values():
            assert re.search(rf"^  {f.name}\s+\S", out, re.M), (name, f.name)
    assert field_help(TrainingConfig)["batch_size"] == "sketches per training step"
    # a model's own note on a shared field keeps the shared meaning
    assert field_help(get_model_class("sketchknitter").Config)["clip_mode"].startswith(
        "how grad_clip applies")


def walk_parsers(parser, path=("sketchlab",)):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk_parsers(child, path + (name,))
    yield " ".join(path), parser


def test_every_command_has_a_description_help_for_every_option_and_quiet():
    for path, parser in walk_parsers(cli.build_parser()):
        if path == "sketchlab":
            continue
        assert parser.description, path
        leaf = not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        assert "--quiet" in parser._option_string_actions or not leaf, path
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, (path, action.option_strings or action.dest)


def test_unknown_category_in_a_big_folder_shows_the_closest_names(tmp_path, capsys):
    names = ["alarm clock", "apple", "applesauce", "banana", "bus", "cactus", "cat", "dog",
             "The Eiffel Tower", "pig", "pineapple", "sheep", "snail", "tree", "zebra"]
    for n in names:
        (tmp_path / f"{n}.npz").write_bytes(b"")
    assert sketchlab("train", "sketch-rnn", "--data-dir", tmp_path, "--categories", "aple",
                     "--out", tmp_path / "run") == 2
    err = err_of(capsys)
    assert "15 categories; closest to 'aple': apple" in err and "zebra" not in err



def test_the_data_folder_of_the_tour_is_ignored_by_git():
    from conftest import REPO

    ignored = (REPO / ".gitignore").read_text().split()
    assert "/data" in ignored and "/runs/" in ignored      # /data: a folder or a link to one


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_makes_openmp_threads_wait_passively_unless_told(given, expected):
    """A fresh `sketchlab` process sets OMP_WAIT_POLICY before torch loads (spinning threads
    starve each other on busy cores); a value the user set is kept."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = ("import os, sys; from sketchlab import cli; cli.main([]); "
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip().splitlines()[-1] == f"{expected} True"
