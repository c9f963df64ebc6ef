"""Sketch-a-Net: the architecture (paper's Table 1), the input pipeline, training through the
model-agnostic trainer into a normal run directory, loading it as a judge, and the pluggable
feature extractors."""

import json

import numpy as np
import pytest
import torch

import raster_standin
from sketchlab import runs
from sketchlab.data.sketches import Sketches
from sketchlab.errors import CheckpointError, ConfigError, DataError
from sketchlab.eval import judge as J
from sketchlab.models import get_model_class
from sketchlab.models.sketch_a_net import Config, SketchANet, crop
from sketchlab.train import checkpoint as ckpt
from sketchlab.train.trainer import Trainer, prepare_data

raster_standin.install()   # the real sketchlab.data.raster when present, else the PIL stand-in

CPU = torch.device("cpu")


def square(size=10.0):
    return np.array([[0, 0, 0], [size, 0, 0], [0, size, 0], [-size, 0, 0], [0, -size, 1]], np.float32)


def zigzag(n=6, h=10.0):
    rows = [[0, 0, 0]] + [[4.0, h if i % 2 == 0 else -h, 0] for i in range(n)]
    rows[-1][2] = 1
    return np.array(rows, np.float32)


def net(num_classes=2, **kw):
    return SketchANet(Config(num_classes=num_classes, **kw))


def judge_of(model, categories, **kw):
    model.categories = tuple(categories)
    return J.SketchANetFeatures(model, "cpu", **kw)


# ------------------------------------------------------------------------------- architecture


def test_sketch_a_net_layers_match_the_paper_table():
    model = net(20).eval()
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
             for m in list(model.features) + [model.fc6, model.fc7, model.fc8]
             if not isinstance(m, torch.nn.ReLU)]
    with torch.no_grad():
        model.logits(torch.zeros(1, 1, 225, 225))
    for h in hooks:
        h.remove()
    assert shapes == [(64, 71, 71), (64, 35, 35), (128, 31, 31), (128, 15, 15), (256, 15, 15),
                      (256, 15, 15), (256, 15, 15), (256, 7, 7), (512, 1, 1), (512, 1, 1),
                      (20, 1, 1)]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (15, 3, 0), (5, 1, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1), (7, 1, 0), (1, 1, 0), (1, 1, 0)]
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LocalResponseNorm))
                   for m in model.modules())
    assert model.dropout.p == 0.5
    # hand count: 64*225+64, 128*64*25+128, 256*128*9+256, 2*(256*256*9+256), 256*512*49+512,
    # 512*512+512, 20*512+20
    assert sum(p.numel() for p in model.parameters()) == 8_390_676
    # the weights' names are those of the judges sketchlab wrote before (they keep loading)
    assert list(model.state_dict()) == [
        f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")] + [
        f"fc{i}.{p}" for i in (6, 7, 8) for p in ("weight", "bias")]


def test_half_width_judge_fits_in_5_mb_as_fp16_safetensors():
    from safetensors.torch import save

    model = net(20, width=0.5)
    assert model.feature_dim == 256
    blob = save({k: v.half().contiguous() for k, v in model.state_dict().items()})
    assert len(blob) <= 5_000_000
    # fp16 weights load into the fp32 network (through the checked loader)
    narrower = net(20, width=0.5)
    narrower.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    with pytest.raises(ConfigError, match="width"):
        net(2, width=0)


def test_embed_is_the_l7_output_and_dropout_only_in_training():
    torch.manual_seed(0)
    model = net(3).eval()
    x = torch.rand(2, 1, 225, 225)
    with torch.no_grad():
        f = model.embed(x)
        assert f.shape == (2, 512) and bool((f >= 0).all())            # after ReLU
        assert torch.allclose(model.head(f), model.logits(x))
        model.train()
        assert not torch.allclose(model.embed(x), model.embed(x))       # dropout active


def test_registered_as_a_normal_model():
    assert get_model_class("sketch-a-net") is SketchANet
    with pytest.raises(ConfigError, match="num_classes"):
        SketchANet(Config())                                            # no data, no classes
    with pytest.raises(ConfigError, match="draws nothing"):
        net(2).generate(n=4)


# --------------------------------------------------------------------------------- input pipeline


def test_crop_centre_and_random_with_flip_match_per_image_slicing():
    imgs = torch.arange(3 * 10 * 10, dtype=torch.float32).reshape(3, 10, 10)
    assert torch.equal(crop(imgs, 6), imgs[:, 2:8, 2:8])
    offsets = torch.tensor([[0, 4], [3, 1], [4, 4]])
    flips = torch.tensor([True, False, True])
    out = crop(imgs, 6, offsets, flips)
    for i in range(3):
        oy, ox = offsets[i].tolist()
        ref = imgs[i, oy:oy + 6, ox:ox + 6]
        assert torch.equal(out[i], ref.flip(1) if flips[i] else ref)


def test_render_ink_high_centre_crop():
    from sketchlab.data import raster

    model = net(1)
    x = model.render([square(), np.zeros((0, 3), np.float32)])
    assert x.shape == (2, 1, 225, 225) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert float(x[1].sum()) == 0.0                                    # empty sketch: blank paper
    assert float(x[0, 0, 0].sum()) == 0.0 and float(x[0].sum()) > 100  # ink inside the margin
    # the centre crop is the middle of the 256 render, ink as 1 - grey/255
    grey = raster.rasterize([square()], size=256, margin=20.0, line_width=3.0).astype(np.float32)
    assert torch.allclose(x[0, 0], 1 - torch.from_numpy(grey[0, 15:240, 15:240]) / 255)


def test_training_batches_are_deterministic_given_the_rng():
    model = net(2)
    sk = [zigzag(12), square(), zigzag(8, 3)]
    a = model.make_batch(sk, True, np.random.default_rng(7))
    b = model.make_batch(sk, True, np.random.default_rng(7))
    c = model.make_batch(sk, True, np.random.default_rng(8))
    assert set(a) == {"strokes", "lengths", "crop", "flip"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in ("strokes", "crop", "flip"))
    assert int(a["crop"].max()) <= 256 - 225
    plain = model.make_batch(sk, False, None)                          # evaluation: no draws
    assert set(plain) == {"strokes", "lengths"}
    assert torch.equal(model.images(plain), model.render(sk))


def test_loss_reports_cross_entropy_accuracy_and_error():
    torch.manual_seed(0)
    model = net(2).eval()
    batch = model.make_batch([square(), zigzag()], False, None)
    batch["category"] = torch.tensor([0, 1])
    out = model.loss(batch)
    with torch.no_grad():
        logits = model.logits(model.images(batch))
    assert torch.allclose(out["loss"], torch.nn.functional.cross_entropy(logits, batch["category"]))
    acc = float((logits.argmax(1) == batch["category"]).float().mean())
    assert float(out["accuracy"]) == acc and float(out["error"]) == pytest.approx(1 - acc)
    del batch["category"]
    with pytest.raises(DataError, match="category"):
        model.loss(batch)


def test_category_labels_map_names_and_refuse_unknown():
    sk = Sketches.from_list([square(), zigzag(), square()], category=[1, 0, 1],
                            category_names=("zigzag", "square"))
    assert J.category_labels(sk, ("square", "zigzag"), "x").tolist() == [0, 1, 0]
    with pytest.raises(DataError, match="not ones the classifier knows"):
        J.category_labels(sk, ("square", "circle"), "x")
    assert J.category_labels(Sketches.from_list([square()]), ("a",), "x").tolist() == [0]
    with pytest.raises(DataError, match="no category"):
        J.category_labels(Sketches.from_list([square()]), ("a", "b"), "x")


# ------------------------------------------------------------------------------------ run dirs


def write_judge_run(path, model, categories, scale_factor=1.0):
    """A run directory as the trainer writes it (config.json + weights), without training."""
    ckpt.write_run_config(path, SketchANet.name, model.config, scale_factor, categories)
    ckpt.save_weights(path / "model.safetensors", model, {"model": SketchANet.name, "step": 0})


def test_load_judge_roundtrip_and_refusals(tmp_path):
    torch.manual_seed(0)
    model = net(2, width=0.25)
    write_judge_run(tmp_path / "clf", model, ("square", "zigzag"), scale_factor=3.5)
    saved = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert saved["model"] == "sketch-a-net" and saved["config"]["input_size"] == 225
    judge = runs.load_judge(tmp_path / "clf", device="cpu")
    assert judge.categories == ("square", "zigzag") and judge.model.scale_factor == 3.5
    assert judge.config.width == 0.25 and judge.name == "sketch-a-net"
    x = torch.rand(1, 1, 225, 225)
    with torch.no_grad():
        assert torch.allclose(judge.model.logits(x), model.eval().logits(x))
    assert not list((tmp_path / "clf").glob(".tmp-*"))                 # atomic writes cleaned up

    other = tmp_path / "rnn"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model": "sketch-rnn"}))
    with pytest.raises(CheckpointError, match="'sketch-rnn' model, not 'sketch-a-net'"):
        runs.load_judge(other)
    with pytest.raises(CheckpointError, match="no such run directory"):
        runs.load_judge(tmp_path / "nope")
    (tmp_path / "clf" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        runs.load_judge(tmp_path / "clf")


def test_judges_written_by_the_earlier_classifier_command_still_load(tmp_path):
    """Before it was a trainable model, a judge's config.json had its own layout; the weights
    have the same names."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = net(2)
    old = tmp_path / "old"
    old.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(old / "model.safetensors"))
    (old / "config.json").write_text(json.dumps({
        "model": "sketch-a-net", "kind": "classifier", "sketchlab_version": "0.1.0",
        "classifier": {"categories": ["square", "zigzag"], "input_size": 225, "render_size": 256,
                       "margin": 20.0, "line_width": 3.0, "dropout": 0.5, "scale_factor": 2.5},
        "train": {"epochs": 30, "batch_size": 128, "lr": 0.0005, "weight_decay": 0.0005,
                  "stretch": 0.1, "drop_prob": 0.1, "flip": True, "amp": True,
                  "eval_batch_size": 256, "seed": 0, "max_steps": None}}))
    judge = runs.load_judge(old, device="cpu")
    assert judge.categories == ("square", "zigzag") and judge.model.scale_factor == 2.5
    sk = [square(), zigzag()]
    assert np.allclose(judge.extract(sk)[1], judge_of(model, judge.categories).extract(sk)[1])
    with pytest.raises(CheckpointError, match="not 'sketch-rnn'"):
        runs.open_run(old, expect_model="sketch-rnn")


def _toy_set(n_per_class, rng):
    sk, cat = [], []
    for i in range(n_per_class):
        sk.append(square(rng.uniform(5, 15)))
        sk.append(zigzag(int(rng.integers(4, 8))))
        cat += [0, 1]
    return Sketches.from_list(sk, category=cat, category_names=("square", "zigzag"))


def train_judge(run_dir, train, valid, max_steps=None, max_epochs=None, **config):
    data = prepare_data(SketchANet, Config(**config), {"train": train, "valid": valid})
    torch.manual_seed(0)
    model = SketchANet(data.config)
    summary = Trainer(model, data, run_dir, device=CPU, max_steps=max_steps,
                      max_epochs=max_epochs, progress=False, log=lambda m: None).train()
    return model, summary


def test_trainer_refuses_to_train_a_judge_into_another_models_run(tmp_path, rng):
    other = tmp_path / "rnn"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model": "sketch-rnn", "config": {}}))
    with pytest.raises(CheckpointError, match="'sketch-rnn' model, not 'sketch-a-net'"):
        train_judge(other, _toy_set(2, rng), _toy_set(1, rng), max_steps=1, batch_size=4,
                    width=0.125)
    assert not (other / "model.safetensors").exists()


@pytest.mark.slow
def test_training_writes_a_normal_run_that_loads_as_a_judge(tmp_path, rng):
    train, valid = _toy_set(3, rng), _toy_set(2, rng)
    model, summary = train_judge(tmp_path / "clf", train, valid, max_epochs=2, batch_size=4,
                                 width=0.25)
    again, _ = train_judge(tmp_path / "again", train, valid, max_epochs=2, batch_size=4,
                           width=0.25)                                  # same seed, same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values()))
    assert summary["step"] == 2 and summary["epoch"] == 2           # 6 sketches / 4: 1 step an epoch
    for f in ("config.json", "model.safetensors", "state.pt", "best.safetensors", "log.csv"):
        assert (tmp_path / "clf" / f).is_file(), f
    info = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert info["model"] == "sketch-a-net" and info["categories"] == ["square", "zigzag"]
    assert info["config"]["num_classes"] == 2 and info["config"]["width"] == 0.25
    header, *rows = (tmp_path / "clf" / "log.csv").read_text().strip().splitlines()
    assert {"loss", "accuracy", "valid_loss", "valid_accuracy", "valid_error"} <= set(header.split(","))
    judge = runs.load_judge(tmp_path / "clf", device="cpu")
    assert 0 <= judge.accuracy(_toy_set(2, rng)) <= 1
    assert 1 - summary["best_valid"] == max(
        float(r.split(",")[header.split(",").index("valid_accuracy")]) for r in rows
        if r.split(",")[header.split(",").index("valid_accuracy")])


@pytest.mark.slow
def test_training_separates_two_shapes(tmp_path, rng):
    data = _toy_set(4, rng)
    kw = dict(max_epochs=6, batch_size=8, learning_rate=3e-4, stretch=0, drop_prob=0)
    model, summary = train_judge(tmp_path / "a", data, data, **kw)
    assert 1 - summary["best_valid"] == 1.0                          # best validation accuracy
    assert runs.load_judge(tmp_path / "a", device="cpu").accuracy(data) == 1.0
    header, *rows = (tmp_path / "a" / "log.csv").read_text().strip().splitlines()
    col = header.split(",").index("loss")
    losses = [float(r.split(",")[col]) for r in rows if r.split(",")[col]]
    assert losses[-1] < losses[0]


# ------------------------------------------------------------------------------ feature extractors


def test_extract_batches_give_the_same_features_as_one_batch():
    torch.manual_seed(0)
    judge = judge_of(net(2), ("a", "b"), batch_size=2)
    sk = [square(), zigzag(), square(5), zigzag(4, 3)]
    feats, logits = judge.extract(sk)
    assert feats.shape == (4, 512) and logits.shape == (4, 2)
    with torch.no_grad():
        f1, l1 = judge.features_and_logits(judge.images(sk))
    assert np.allclose(feats, f1.numpy(), atol=1e-5) and np.allclose(logits, l1.numpy(), atol=1e-5)


def test_make_extractor_and_missing_inception_weights(tmp_path):
    judge = judge_of(net(2), ("a", "b"))
    assert J.make_extractor(None, judge) is judge
    assert J.make_extractor("classifier", judge) is judge
    assert J.make_extractor("sketch-a-net", judge) is judge
    with pytest.raises(ConfigError, match="unknown feature extractor"):
        J.make_extractor("vgg16", judge)
    with pytest.raises(CheckpointError, match="never downloads weights"):
        J.make_extractor(f"inception:{tmp_path / 'pt_inception.pth'}", judge)


def test_inception_matches_the_reference_layout_and_refuses_foreign_weights(tmp_path):
    from sketchlab.eval.inception import FIDInceptionV3, InceptionFeatures

    model = FIDInceptionV3()
    # torchvision's Inception-v3 without the aux head has 23,834,568 parameters with 1000
    # classes; the FID graph has 1008 (8 more rows of 2048 weights and 8 biases).
    assert sum(p.numel() for p in model.parameters()) == 23_834_568 + 8 * 2049
    assert len(model.state_dict()) == 566
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "fid.pth")
    ex = InceptionFeatures(tmp_path / "fid.pth", device="cpu")
    assert all(torch.equal(ex.net.state_dict()[k], v) for k, v in state.items())
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not an FID Inception-v3"):
        InceptionFeatures(tmp_path / "other.pth", device="cpu")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        InceptionFeatures(tmp_path / "junk.pth", device="cpu")


@pytest.mark.slow
def test_inception_features_shape(tmp_path):
    from sketchlab.eval.inception import FIDInceptionV3, InceptionFeatures

    torch.save(FIDInceptionV3().state_dict(), tmp_path / "fid.pth")
    feats, logits = InceptionFeatures(tmp_path / "fid.pth", device="cpu").extract([square()])
    assert feats.shape == (1, 2048) and logits.shape == (1, 1008)


@pytest.mark.gpu
def test_cuda_input_pipeline_and_training_step_match_cpu(tmp_path, rng):
    model = net(2)
    sk = [square(), zigzag(), square(7), zigzag(5, 4)]
    cpu = model.render(sk)
    gpu = model.to("cuda").render(sk).cpu()
    # the GPU rasterizer may anti-alias differently by a grey level or two, not more
    assert (gpu - cpu).abs().mean() < 0.01
    data = prepare_data(SketchANet, Config(batch_size=4), {"train": _toy_set(4, rng),
                                                           "valid": _toy_set(2, rng)})
    trained = SketchANet(data.config)
    summary = Trainer(trained, data, tmp_path / "clf", device=torch.device("cuda"), max_steps=2,
                      progress=False, log=lambda m: None).train()
    assert np.isfinite(summary["best_valid"])
    torch.manual_seed(0)
    model = net(2).cpu()
    a = judge_of(model, ("a", "b")).extract(sk)[0]
    b = J.SketchANetFeatures(model, "cuda").extract(sk)[0]
    assert np.allclose(a, b, rtol=0.05, atol=0.05)

