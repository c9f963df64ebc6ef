"""Crash tests: a training killed with SIGKILL at 20 moments (between the files of a checkpoint,
inside a write, mid-step, mid-log-row, at random times) resumes each time and ends with the
weights of a run never killed, bit for bit; two trainings on one run directory: the second is
refused and the first finishes intact. The killing is done by tests/crash_driver.py."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sketchlab import runs
from sketchlab.train import checkpoint as ckpt

DRIVER = Path(__file__).with_name("crash_driver.py")


def drive(work: Path, spec: dict) -> dict:
    proc = subprocess.run([sys.executable, str(DRIVER), str(work), json.dumps(spec)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def log_rows(path: Path) -> list[list[str]]:
    """log.csv without the wall-clock column."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    drop = rows[0].index("elapsed")
    return [r[:drop] + r[drop + 1:] for r in rows]


def assert_same_run(ref: Path, run: Path) -> None:
    for name in ("model.safetensors", "best.safetensors"):
        assert same_tensors(load_file(ref / name), load_file(run / name)), name
        assert metadata(ref / name) == metadata(run / name), name
    for name in ("state.pt", "best_state.pt"):
        a = torch.load(ref / name, weights_only=True)
        b = torch.load(run / name, weights_only=True)
        for key in ("step", "epoch", "batch_in_epoch", "best_valid", "bad_evals", "rewinds",
                    "log_rows", "term_sums", "term_counts"):
            assert a[key] == b[key], (name, key)
        assert same_tensors(a["weights"], b["weights"]), name
        assert torch.equal(a["torch_rng"], b["torch_rng"]), name
        for (ka, sa), (kb, sb) in zip(a["optimizer"]["state"].items(),
                                      b["optimizer"]["state"].items()):
            assert ka == kb and all(torch.equal(sa[k], sb[k]) for k in sa), (name, ka)
    rows_ref, rows_run = log_rows(ref / "log.csv"), log_rows(run / "log.csv")
    assert rows_run == rows_ref          # the same rows, none twice, no torn one
    assert not list(run.glob(".*.tmp")), "temporary files of killed writes were left"
    assert not (run / ckpt.LOCK_FILE).exists()


@pytest.mark.slow
def test_sigkill_at_20_moments_then_resume_gives_the_uninterrupted_weights(tmp_path):
    out = drive(tmp_path, {"mode": "crash", "steps": 100, "kills": 20, "seed": 1})
    assert out["ref"] == "exit 0" and out["final"] == "exit 0", out
    assert out["kills"] == 20, out
    kinds = {m.split()[0] for m in out["moments"]}
    assert {"rename-before", "rename-after", "timed"} <= kinds, out["moments"]
    ref = tmp_path / "ref"
    assert torch.load(ref / "state.pt", weights_only=True)["rewinds"] > 0   # rewinds happened
    assert_same_run(ref, tmp_path / "crash")


@pytest.mark.slow
def test_a_second_trainer_on_the_same_run_is_refused_and_the_first_finishes(tmp_path):
    out = drive(tmp_path, {"mode": "concurrent", "steps": 40})
    assert out["second"] == "exit 2", out
    assert f"pid {out['first_pid']}" in out["refused"], out["refused"]
    assert "another training is writing into this run directory" in out["refused"]
    assert "crash_driver.py" in out["refused"]           # the holder's command
    assert out["first"] == "exit 0", out
    run = tmp_path / "run"
    state = ckpt.load_state(run / "state.pt")
    assert state["step"] == 40
    assert not (run / ckpt.LOCK_FILE).exists()
    assert runs.open_run(run).model.name == "sketch-rnn"       # config and weights of one run
