"""The generic trainer on a tiny model: learning, lr schedule, clipping, resume, NaN, early stop."""

import copy
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from sketchlab.config import TrainingConfig
from sketchlab.data import strokes as S
from sketchlab.data.sketches import Sketches
from sketchlab.errors import CheckpointError
from sketchlab.models.base import SketchModel
from sketchlab.train import checkpoint as ckpt
from sketchlab.train.trainer import Trainer, clip_gradients, learning_rate, prepare_data


@dataclass
class TinyConfig(TrainingConfig):
    max_seq_len: int = 12
    batch_size: int = 8
    learning_rate: float = 0.05
    decay_rate: float = 0.999
    valid_metric: str = "loss"
    patience: int = 0
    checkpoint_every: int = 5
    nan_calls: tuple[int, ...] = ()          # training calls of loss() (0-based) that return NaN


class Tiny(SketchModel):
    """Predicts each sketch's mean offset from its first offset; keeps a running-mean buffer."""

    name = "tiny"
    Config = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.lin = torch.nn.Linear(2, 2)
        self.register_buffer("seen", torch.zeros(()))
        self._pending = None
        self.calls = 0

    def make_batch(self, sketches, train, rng):
        x = np.stack([s[0, :2] for s in sketches]).astype(np.float32)
        y = np.stack([s[:, :2].mean(0) for s in sketches]).astype(np.float32)
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(y)}

    def loss(self, batch, step=0):
        pred = self.lin(batch["x"])
        mse = ((pred - batch["y"]) ** 2).mean()
        if self.training:
            if self.calls in self.config.nan_calls:
                mse = mse * float("nan")
            self.calls += 1
        self._pending = float(len(batch["x"]))
        return {"loss": mse, "mse": mse.detach()}

    def on_step_end(self, step):
        self.seen += self._pending


def toy_splits(n=64, seed=0):
    rng = np.random.default_rng(seed)
    def make(k):
        out = []
        for _ in range(k):
            m = rng.integers(3, 10)
            s = np.zeros((m, 3), np.float32)
            s[:, :2] = rng.normal(size=(m, 2)) * 5 + rng.normal(size=2) * 10
            s[-1, 2] = 1
            out.append(s)
        return Sketches.from_list(out, category=0, category_names=("toy",))
    return {"train": make(n), "valid": make(16), "test": make(16)}


def build(tmp_path, **over):
    cfg = TinyConfig(**over)
    data = prepare_data(Tiny, cfg, toy_splits())
    return Tiny(data.config), data


def test_prepare_data_normalises_by_train_std():
    raw = toy_splits()
    data = prepare_data(Tiny, TinyConfig(), raw)
    assert data.scale_factor == pytest.approx(S.scale_factor(raw["train"]))
    assert S.scale_factor(data.splits["train"]) == pytest.approx(1.0, rel=1e-5)
    assert data.categories == ("toy",)


def test_learning_rate_schedule_hand_values():
    cfg = TrainingConfig(learning_rate=1e-3, min_learning_rate=1e-5, decay_rate=0.9999)
    assert learning_rate(cfg, 0) == pytest.approx(1e-3)
    assert learning_rate(cfg, 10000) == pytest.approx(9.9e-4 * 0.9999 ** 10000 + 1e-5)
    cfg3 = TrainingConfig(lr_decay_every=3.0)   # RPCL: 0.9999^(s/3)
    assert learning_rate(cfg3, 300) == pytest.approx(9.9e-4 * 0.9999 ** 100 + 1e-5)


def test_clip_modes():
    p1 = torch.nn.Parameter(torch.zeros(2))
    p2 = torch.nn.Parameter(torch.zeros(1))
    p1.grad = torch.tensor([3.0, -4.0])
    p2.grad = torch.tensor([0.5])
    clip_gradients([p1, p2], "value", 1.0)
    assert p1.grad.tolist() == [1.0, -1.0] and p2.grad.tolist() == [0.5]
    p1.grad = torch.tensor([3.0, -4.0])
    clip_gradients([p1, p2], "norm", 1.0)      # per parameter: (3,-4)/5; 0.5 untouched
    assert torch.allclose(p1.grad, torch.tensor([0.6, -0.8])) and p2.grad.tolist() == [0.5]


def test_trains_and_writes_run_dir(tmp_path):
    model, data = build(tmp_path)
    before = Trainer(model, data, tmp_path / "run", progress=False, max_steps=0, log=lambda m: None).evaluate()
    tr = Trainer(model, data, tmp_path / "run", progress=False, max_steps=40, log=lambda m: None)
    summary = tr.train()
    assert summary["step"] == 40
    after = tr.evaluate()
    assert after["loss"] < 0.5 * before["loss"]
    run = tmp_path / "run"
    for f in ("config.json", "model.safetensors", "state.pt", "best.safetensors", "log.csv"):
        assert (run / f).is_file(), f
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "tiny" and cfg["scale_factor"] == pytest.approx(data.scale_factor)
    header = (run / "log.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["step", "epoch", "lr", "elapsed"] and "valid_loss" in header
    assert float(model.seen) == 40 * 8      # on_step_end ran after every step


def test_resume_matches_uninterrupted_run(tmp_path):
    torch.manual_seed(0)
    m_full, data = build(tmp_path)
    Trainer(m_full, data, tmp_path / "full", progress=False, max_steps=23, log=lambda m: None).train()

    torch.manual_seed(0)
    m_a, data = build(tmp_path)
    Trainer(m_a, data, tmp_path / "cut", progress=False, max_steps=11, log=lambda m: None).train()
    torch.manual_seed(123)   # a fresh process: different init, restored from the checkpoint
    m_b, data = build(tmp_path)
    msgs = []
    tr = Trainer(m_b, data, tmp_path / "cut", progress=False, max_steps=23, log=msgs.append)
    tr.train()
    assert any("resumed" in m for m in msgs)
    assert tr.step == 23
    for (k, a), (_, b) in zip(m_full.state_dict().items(), m_b.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), k   # buffers included


def test_nan_step_is_skipped(tmp_path):
    model, data = build(tmp_path, nan_calls=(3,))
    msgs = []
    tr = Trainer(model, data, tmp_path / "run", progress=False, max_steps=6, log=msgs.append)
    tr.train()
    assert any("non-finite" in m for m in msgs)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert tr.step == 6


def test_repeated_nan_restores_last_checkpoint(tmp_path):
    # NaN from the 8th call on: one skip, the epoch-end checkpoint at step 7, four more skips;
    # the fifth in a row restores step 7 and training carries on
    model, data = build(tmp_path, nan_calls=tuple(range(7, 12)))
    msgs = []
    tr = Trainer(model, data, tmp_path / "run", progress=False, max_steps=10, log=msgs.append)
    tr.train()
    assert any("restored the checkpoint of step 7" in m for m in msgs)
    assert tr.step == 10 and all(torch.isfinite(p).all() for p in model.parameters())


def test_refuses_checkpoint_of_other_model(tmp_path):
    model, data = build(tmp_path)
    Trainer(model, data, tmp_path / "run", progress=False, max_steps=2, log=lambda m: None).train()
    cfg_path = tmp_path / "run" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"] = "sketch-rnn"
    cfg_path.write_text(json.dumps(cfg))
    model2, data2 = build(tmp_path)
    with pytest.raises(CheckpointError, match="sketch-rnn"):
        Trainer(model2, data2, tmp_path / "run", progress=False, max_steps=4, log=lambda m: None).train()
    with pytest.raises(CheckpointError, match="config.json"):
        ckpt.read_run_config(tmp_path / "nothing-here")


def test_early_stopping_and_reload_best(tmp_path):
    # lr so large that validation gets worse: patience 2 stops the run, rewinding in between
    model, data = build(tmp_path, learning_rate=50.0, min_learning_rate=50.0, patience=2,
                        reload_best=True, clip_mode="none", eval_every=2)
    msgs = []
    tr = Trainer(model, data, tmp_path / "run", progress=False, max_steps=200, log=msgs.append)
    summary = tr.train()
    assert summary["stopped_early"] and summary["step"] < 200
    assert any("rewound" in m for m in msgs)


def test_a_rewind_retries_the_epoch_on_new_data_and_optionally_keeps_the_moments(tmp_path):
    """After a rewind the step counter goes back, but the retried epoch is not a replay: a new
    order, a new batch RNG, the torch RNG running on. rewind_optimizer=False keeps Adam's
    current moments (SP-gra2seq's train.py) instead of the checkpoint's."""
    for keep_moments in (False, True):
        model, data = build(tmp_path, reload_best=True, patience=5, eval_every=4,
                            rewind_optimizer=not keep_moments)
        run = tmp_path / f"run{keep_moments}"
        tr = Trainer(model, data, run, progress=False, max_steps=4, log=lambda m: None)
        tr.train()                                  # evaluates at step 4: the best checkpoint
        order0 = tr._epoch_order(0)
        for _ in range(3):                          # move on, so the live moments differ
            tr.optimizer.zero_grad()
            tr.model.loss(tr._train_batch(order0, 0, tr.step), tr.step)["loss"].backward()
            tr.optimizer.step()
            tr.step += 1
        moments = [v["exp_avg"].clone() for v in tr.optimizer.state.values()]
        torch.manual_seed(123)
        draw_before = torch.rand(1)
        torch.manual_seed(123)
        tr._rewind_to_best("test")
        assert tr.step == 4 and tr.rewinds == 1
        assert not np.array_equal(tr._epoch_order(0), order0)
        assert torch.rand(1) == draw_before          # the torch RNG was not rewound
        after = [v["exp_avg"] for v in tr.optimizer.state.values()]
        same = all(torch.equal(a, b) for a, b in zip(after, moments))
        assert same == keep_moments
        tr.save()
        model2, data2 = build(tmp_path, reload_best=True, patience=5, eval_every=4)
        tr2 = Trainer(model2, data2, run, progress=False, max_steps=8, log=lambda m: None)
        assert tr2.maybe_resume() and tr2.rewinds == 1   # the counter survives a resume


def test_time_limit_stops_with_a_checkpoint_and_resumes(tmp_path):
    model, data = build(tmp_path)
    msgs = []
    tr = Trainer(model, data, tmp_path / "run", progress=False, max_seconds=0.0, log=msgs.append)
    summary = tr.train()
    assert summary["step"] == 0 and any("time limit" in m for m in msgs)
    assert (tmp_path / "run" / "best.safetensors").is_file()   # validated and checkpointed
    model2, data2 = build(tmp_path)
    tr2 = Trainer(model2, data2, tmp_path / "run", progress=False, max_steps=5, log=lambda m: None)
    assert tr2.train()["step"] == 5


def test_terms_reported_on_some_steps_are_averaged_over_those_steps(tmp_path):
    class Sparse(Tiny):
        def loss(self, batch, step=0):
            out = super().loss(batch, step)
            if step % 2 == 0:
                out["even"] = torch.tensor(3.0)
            return out

    cfg = TinyConfig()
    data = prepare_data(Sparse, cfg, toy_splits())
    Trainer(Sparse(data.config), data, tmp_path / "run", progress=False, max_steps=8,
            log=lambda m: None).train()
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    train_rows = [r.split(",") for r in rows[1:] if r.split(",")[header.index("even")]]
    assert train_rows and all(float(r[header.index("even")]) == 3.0 for r in train_rows)


def test_log_of_a_run_shorter_than_one_log_period_has_term_columns(tmp_path):
    model, data = build(tmp_path)
    Trainer(model, data, tmp_path / "run", progress=False, max_steps=2, log=lambda m: None).train()
    header = (tmp_path / "run" / "log.csv").read_text().splitlines()[0].split(",")
    assert "valid_loss" in header and "loss" in header


def test_patience_start_spares_a_warm_up_phase(tmp_path):
    # the same diverging run as above, but evaluations before step 40 do not count
    model, data = build(tmp_path, learning_rate=50.0, min_learning_rate=50.0, patience=1,
                        clip_mode="none", eval_every=2, patience_start=40)
    summary = Trainer(model, data, tmp_path / "run", progress=False, max_steps=200,
                      log=lambda m: None).train()
    assert summary["stopped_early"] and summary["step"] >= 40


def test_optimizer_state_loads_into_the_tensors_it_already_holds():
    """What a mid-run rewind needs under CUDA graphs: the captured moment / step / lr tensors
    receive the checkpoint's values instead of being replaced by new ones."""
    from sketchlab.train.graphed import load_optimizer_state_in_place

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([w], lr=torch.tensor(0.1))
    for _ in range(2):
        opt.zero_grad()
        (w * torch.arange(3.0)).sum().backward()
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    for _ in range(3):
        opt.zero_grad()
        (w * torch.arange(3.0)).sum().backward()
        opt.step()
    held = dict(opt.state[w])
    lr = opt.param_groups[0]["lr"]
    load_optimizer_state_in_place(opt, saved)
    now = opt.state[w]
    assert all(now[k] is held[k] for k in held)            # same tensor objects
    assert torch.equal(now["exp_avg"], saved["state"][0]["exp_avg"])
    assert float(now["step"]) == 2.0
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.1)


@pytest.mark.slow
def test_sigterm_stops_training_like_ctrl_c_with_a_checkpoint(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-c", "import sys; from sketchlab.cli import main; sys.exit(main())",
           "train", "sketch-rnn", "--categories", "star,fish", "--limit-per-category", "40",
           "--out", str(out), "--max-steps", "100000", "--no-progress", "--device", "cpu",
           "--hparams", "enc_rnn_size=8,dec_rnn_size=16,z_size=4,max_seq_len=40,batch_size=8,"
                        "eval_every=0,checkpoint_every=100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "log.csv").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert "checkpoint written" in stdout
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["step"] > 0


def test_constructing_a_trainer_starts_no_process_group(tmp_path, monkeypatch):
    """The process group is the entry point's (`init_distributed`); the trainer only reads it."""
    import torch.distributed as dist

    from sketchlab.errors import ConfigError
    from sketchlab.train.trainer import init_distributed

    model, data = build(tmp_path)
    tr = Trainer(model, data, tmp_path / "run", progress=False, log=lambda m: None)
    assert not tr.distributed and tr.world == 1 and not dist.is_initialized()
    assert not init_distributed()             # no torchrun environment: nothing to join
    monkeypatch.setenv("WORLD_SIZE", "2")     # torchrun's environment, but no group joined
    with pytest.raises(ConfigError, match="init_distributed"):
        Trainer(model, data, tmp_path / "run", progress=False, log=lambda m: None)
    assert not dist.is_initialized()


def test_batches_carry_categories_as_indices_into_the_runs_categories(tmp_path):
    """A classifier's targets: `category` of each batch, matched by name to the training split's
    categories even when another split lists them in another order."""
    from sketchlab.errors import DataError
    from sketchlab.train.data import category_labels

    raw = toy_splits()
    del raw["test"]
    n = len(raw["train"])
    raw["train"] = Sketches(raw["train"].points, raw["train"].offsets,
                            category=np.arange(n) % 2, category_names=("a", "b"))
    m = len(raw["valid"])
    raw["valid"] = Sketches(raw["valid"].points, raw["valid"].offsets,
                            category=np.arange(m) % 2, category_names=("b", "a"))
    data = prepare_data(Tiny, TinyConfig(), raw)
    tr = Trainer(Tiny(data.config), data, tmp_path / "run", progress=False, log=lambda m: None)
    order = tr._epoch_order(0)
    batch = tr._train_batch(order, 0, 0)
    assert batch["category"].tolist() == (order[:8] % 2).tolist()
    valid = next(tr.valid_batches())
    assert valid["category"].tolist() == [1 - i % 2 for i in range(len(valid["category"]))]
    assert category_labels(Sketches.from_list([np.zeros((2, 3), np.float32)]), ("a",)) is None
    with pytest.raises(DataError, match=r"\['c'\]"):
        category_labels(Sketches.from_list([np.zeros((2, 3), np.float32)], category=[0],
                                           category_names=("c",)), ("a", "b"))


class Noisy(Tiny):
    """A loss that draws from torch's RNG in eval mode too (as a VAE's sampled code does)."""

    def loss(self, batch, step=0):
        out = super().loss(batch, step)
        noise = torch.rand(()) * 0.1
        out["loss"] = out["loss"] + noise
        out["mse"] = out["mse"] + noise
        return out


def test_validation_is_seeded_and_leaves_the_training_rng_alone(tmp_path):
    cfg = TinyConfig()
    data = prepare_data(Noisy, cfg, toy_splits())
    tr = Trainer(Noisy(data.config), data, tmp_path / "run", progress=False, log=lambda m: None)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = tr.evaluate()
    assert torch.equal(torch.get_rng_state(), state)     # the training's stream did not move
    torch.manual_seed(6)
    assert tr.evaluate() == first                         # the same weights score the same


def test_a_step_or_time_limit_is_not_a_plateau(tmp_path):
    """RPCL-style training (rewind to the best checkpoint after a non-improving validation):
    the validation of a run cut by its step or time limit neither rewinds nor counts against
    patience (both cuts end in the same `_finish`)."""
    model, data = build(tmp_path, learning_rate=50.0, min_learning_rate=50.0, patience=3,
                        reload_best=True, clip_mode="none", eval_every=3)
    msgs = []
    tr = Trainer(model, data, tmp_path / "run", progress=False, max_steps=4, log=msgs.append)
    tr.train()                          # validates at 3 (best), then cut at 4: worse, kept
    assert any(m.startswith("step 4 ") and "(best " in m for m in msgs), msgs
    assert tr.step == 4 and tr.bad_evals == 0 and tr.rewinds == 0
    assert not any("rewound" in m for m in msgs)
    assert ckpt.load_state(tmp_path / "run" / "state.pt")["step"] == 4


def test_resume_refuses_other_categories(tmp_path):
    model, data = build(tmp_path)
    Trainer(model, data, tmp_path / "run", progress=False, max_steps=2, log=lambda m: None).train()
    raw = toy_splits()
    for sk in raw.values():
        sk.category_names = ("other",)
    data2 = prepare_data(Tiny, TinyConfig(), raw)
    with pytest.raises(CheckpointError, match=r"trained on categories toy, not other"):
        Trainer(Tiny(data2.config), data2, tmp_path / "run", progress=False, max_steps=4,
                log=lambda m: None).train()


def test_run_directories_of_the_two_file_checkpoint_still_resume(tmp_path):
    """Before the weights moved into state.pt, a checkpoint was model.safetensors + state.pt.
    Such a pair resumes when both carry the same step; a pair torn by a kill between the two
    renames is not mixed: the best pair is used instead, with a note."""
    model, data = build(tmp_path)
    run = tmp_path / "run"
    Trainer(model, data, run, progress=False, max_steps=8, log=lambda m: None).train()
    for name in ("state.pt", "best_state.pt"):       # the old layout: no weights inside
        state = torch.load(run / name, weights_only=True)
        del state["weights"]
        torch.save(state, run / name)
    model2, data2 = build(tmp_path)
    tr = Trainer(model2, data2, run, progress=False, max_steps=8, log=lambda m: None)
    assert tr.maybe_resume() and tr.step == 8
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), k
    ckpt.save_weights(run / "model.safetensors", model, {"model": "tiny", "step": 9})  # torn
    msgs = []
    tr = Trainer(build(tmp_path)[0], data2, run, progress=False, max_steps=8, log=msgs.append)
    assert tr.maybe_resume()
    assert any("step 9 but state.pt at step 8" in m and "best checkpoint" in m for m in msgs)
