"""Kills a training with SIGKILL again and again and resumes it (used by tests/test_crash.py).

Run as `python tests/crash_driver.py WORKDIR SPEC_JSON`; prints one JSON line with what happened.
It imports torch and sketchlab once and warms them up with a one-step training, then forks one
child per attempt (a "zygote": each start costs a fork, not a Python start-up and first-call
set-up). Torch runs with one intra-op thread here, so no thread pool exists to break in a fork.

Modes (SPEC_JSON's "mode"):

* "crash": train `steps` steps into WORKDIR/ref in one go, then into WORKDIR/crash with a SIGKILL
  at each of `kills` moments and a resume after each. A moment is an event counted inside the
  child (the k-th optimizer step, the k-th fsync of an atomic write (the temp file written, not
  yet renamed), just before or just after the k-th rename (between the files of one checkpoint),
  a torn log.csv row), or a random delay after which this process kills the child.
* "concurrent": one training into WORKDIR/run; while it runs (its lock taken), a second one into
  the same folder must be refused; then the first must finish intact.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from sketchlab.data.synthetic import make_doodle_splits  # noqa: E402
from sketchlab.errors import SketchlabError  # noqa: E402
from sketchlab.models.sketch_rnn import SketchRNN  # noqa: E402
from sketchlab.train import runlog  # noqa: E402
from sketchlab.train.trainer import Trainer, prepare_data  # noqa: E402

HPARAMS = dict(enc_rnn_size=4, dec_rnn_size=8, z_size=2, max_seq_len=40, batch_size=4,
               num_mixture=1, learning_rate=0.005, checkpoint_every=2, eval_every=5,
               patience=1000, reload_best=True, max_valid_batches=1, seed=3)
RAW = make_doodle_splits(n_train=24, n_valid=8, n_test=8, categories=["star", "fish"], seed=1)


def train(run_dir: Path, steps: int, log=lambda m: None) -> dict:
    cfg = SketchRNN.Config(**HPARAMS)
    data = prepare_data(SketchRNN, cfg, RAW)
    torch.manual_seed(cfg.seed)
    model = SketchRNN(data.config)
    trainer = Trainer(model, data, run_dir, device=torch.device("cpu"), max_steps=steps,
                      progress=False, log=log)
    return trainer.train()


# ---- kill points inside a child -------------------------------------------------------------

def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def arm(kind: str, k: int) -> None:
    """SIGKILL this process at the k-th event of `kind` (counted from now)."""
    count = {"n": 0}

    def hit() -> bool:
        count["n"] += 1
        return count["n"] == k

    if kind in ("rename-before", "rename-after"):
        real = os.replace

        def replace(src, dst, *a, **kw):
            fire = hit()
            if fire and kind == "rename-before":
                _die()
            real(src, dst, *a, **kw)
            if fire:
                _die()
        os.replace = replace
    elif kind == "fsync":
        real_fsync = os.fsync

        def fsync(fd):
            if hit():
                _die()
            real_fsync(fd)
        os.fsync = fsync
    elif kind == "step":
        real_step = torch.optim.Adam.step

        def step(self, *a, **kw):
            out = real_step(self, *a, **kw)
            if hit():
                _die()
            return out
        torch.optim.Adam.step = step
    elif kind == "torn-log":
        real_write = runlog.RunLog.write

        def write(self, row):
            if hit():
                with open(self.path, "a") as fh:   # half a row, no newline, then death
                    fh.write(f"{row['step']},{row['epoch']},0.0")
                    fh.flush()
                _die()
            real_write(self, row)
        runlog.RunLog.write = write
    elif kind != "none":
        raise ValueError(kind)


def child(run_dir: Path, steps: int, kind: str, k: int) -> None:
    """The body of a forked child: arm the kill point, train, exit (0, or 3 on an error)."""
    code = 0
    try:
        arm(kind, k)
        train(run_dir, steps)
    except SketchlabError as e:
        print(f"child error: {e}", file=sys.stderr)
        code = 3
    except BaseException as e:  # noqa: BLE001 - report anything, then leave the fork
        print(f"child crash: {type(e).__name__}: {e}", file=sys.stderr)
        code = 4
    os._exit(code)


def spawn(run_dir: Path, steps: int, kind: str = "none", k: int = 0) -> int:
    pid = os.fork()
    if pid == 0:
        child(run_dir, steps, kind, k)
    return pid


def wait(pid: int) -> str:
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit {os.WEXITSTATUS(status)}"


# ---- modes ------------------------------------------------------------------------------------

def crash(work: Path, spec: dict) -> dict:
    steps, kills = spec["steps"], spec["kills"]
    rng = random.Random(spec.get("seed", 0))
    t0 = time.time()
    ref = wait(spawn(work / "ref", steps))
    t_ref = time.time() - t0
    # SIGKILL moments: mostly early events, so that each child makes a little progress and the
    # kills all land before the run's last step
    kinds = ["step", "fsync", "rename-before", "rename-after", "timed"] * 4 + ["torn-log"] * 2
    moments, outcomes = [], []
    killed = f"signal {signal.SIGKILL}"
    while sum(o == killed for o in outcomes) < kills and len(outcomes) < 2 * kills:
        kind = rng.choice(kinds)
        if kind == "timed":
            # at most a fifth of the uninterrupted run: a few timed kills must not add up to a
            # whole run (the child would finish before the kill, and the kills run short)
            delay = rng.uniform(0.05, min(1.5, 0.2 * t_ref))
            pid = spawn(work / "crash", steps)
            time.sleep(delay)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            moments.append(f"timed {delay:.2f}s")
        else:
            k = rng.randint(1, {"step": 3, "torn-log": 1}.get(kind, 5))
            pid = spawn(work / "crash", steps, kind, k)
            moments.append(f"{kind} {k}")
        outcomes.append(wait(pid))
        if outcomes[-1].startswith("exit"):   # the run finished (or failed) before the kill
            break
    final = wait(spawn(work / "crash", steps))
    return {"ref": ref, "final": final, "moments": moments, "outcomes": outcomes,
            "kills": sum(o == killed for o in outcomes),
            "seconds": round(time.time() - t0, 1), "ref_seconds": round(t_ref, 2)}


def concurrent(work: Path, spec: dict) -> dict:
    run = work / "run"
    lock = run / "train.lock"
    first = spawn(run, spec["steps"])
    deadline = time.time() + 60
    while not lock.is_file() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    refused = None
    pid = os.fork()
    if pid == 0:   # the second trainer: must be refused, naming the first
        code = 0
        try:
            train(run, spec["steps"] * 2)
        except SketchlabError as e:
            (work / "second.txt").write_text(str(e))
            code = 2
        os._exit(code)
    second = wait(pid)
    if (work / "second.txt").is_file():
        refused = (work / "second.txt").read_text()
    return {"first_pid": first, "second": second, "refused": refused, "first": wait(first)}


if __name__ == "__main__":
    work, spec = Path(sys.argv[1]), json.loads(sys.argv[2])
    train(work / "warm-up", 1)
    result = {"crash": crash, "concurrent": concurrent}[spec["mode"]](work, spec)
    print(json.dumps(result))
