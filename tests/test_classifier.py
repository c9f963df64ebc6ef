"""Sketch-a-Net: architecture per spec section 15, input pipeline, run directory, training, and the
pluggable feature extractors."""

import json

import numpy as np
import pytest
import torch

import raster_standin
from sketchlab.data.sketches import Sketches
from sketchlab.errors import CheckpointError, ConfigError, DataError
from sketchlab.eval import classifier as C

raster_standin.install()   # the real sketchlab.data.raster when present, else the PIL stand-in

CPU = torch.device("cpu")


def square(size=10.0):
    return np.array([[0, 0, 0], [size, 0, 0], [0, size, 0], [-size, 0, 0], [0, -size, 1]], np.float32)


def zigzag(n=6, h=10.0):
    rows = [[0, 0, 0]] + [[4.0, h if i % 2 == 0 else -h, 0] for i in range(n)]
    rows[-1][2] = 1
    return np.array(rows, np.float32)


# ------------------------------------------------------------------------------- architecture


def test_sketch_a_net_layers_match_the_spec_table():
    net = C.SketchANet(num_classes=20).eval()
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
             for m in list(net.features) + [net.fc6, net.fc7, net.fc8]
             if not isinstance(m, torch.nn.ReLU)]
    with torch.no_grad():
        net(torch.zeros(1, 1, 225, 225))
    for h in hooks:
        h.remove()
    assert shapes == [(64, 71, 71), (64, 35, 35), (128, 31, 31), (128, 15, 15), (256, 15, 15),
                      (256, 15, 15), (256, 15, 15), (256, 7, 7), (512, 1, 1), (512, 1, 1),
                      (20, 1, 1)]
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (15, 3, 0), (5, 1, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1), (7, 1, 0), (1, 1, 0), (1, 1, 0)]
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LocalResponseNorm))
                   for m in net.modules())
    assert net.dropout.p == 0.5
    # hand count: 64*225+64, 128*64*25+128, 256*128*9+256, 2*(256*256*9+256), 256*512*49+512,
    # 512*512+512, 20*512+20
    assert sum(p.numel() for p in net.parameters()) == 8_390_676


def test_embed_is_the_l7_output_and_dropout_only_in_training():
    torch.manual_seed(0)
    net = C.SketchANet(3).eval()
    x = torch.rand(2, 1, 225, 225)
    with torch.no_grad():
        f = net.embed(x)
        assert f.shape == (2, 512) and bool((f >= 0).all())            # after ReLU
        assert torch.allclose(net.head(f), net(x))
        net.train()
        assert not torch.allclose(net.embed(x), net.embed(x))           # dropout active


# --------------------------------------------------------------------------------- input pipeline


def test_crop_centre_and_random_with_flip_match_per_image_slicing():
    imgs = torch.arange(3 * 10 * 10, dtype=torch.float32).reshape(3, 10, 10)
    assert torch.equal(C.crop(imgs, 6), imgs[:, 2:8, 2:8])
    gen = torch.Generator().manual_seed(1)
    out = C.crop(imgs, 6, torch.Generator().manual_seed(1), flip=True)
    oy, ox = torch.randint(0, 5, (2, 3), generator=gen)
    flipped = torch.rand(3, generator=gen) < 0.5
    for i in range(3):
        ref = imgs[i, oy[i]:oy[i] + 6, ox[i]:ox[i] + 6]
        assert torch.equal(out[i], ref.flip(1) if flipped[i] else ref)


def test_classifier_images_ink_high_centre_crop():
    cfg = C.ClassifierConfig(categories=("a",))
    x = C.classifier_images([square(), np.zeros((0, 3), np.float32)], cfg, CPU)
    assert x.shape == (2, 1, 225, 225) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert float(x[1].sum()) == 0.0                                    # empty sketch: blank paper
    assert float(x[0, 0, 0].sum()) == 0.0 and float(x[0].sum()) > 100  # ink inside the margin
    # the centre crop is the middle of the 256 render, ink as 1 - grey/255
    grey = C._render([square()], 256, cfg.margin, cfg.line_width, CPU)
    assert torch.allclose(x[0, 0], 1 - grey[0, 15:240, 15:240] / 255)


def test_category_labels_map_names_and_refuse_unknown():
    sk = Sketches.from_list([square(), zigzag(), square()], category=[1, 0, 1],
                            category_names=("zigzag", "square"))
    assert C.category_labels(sk, ("square", "zigzag"), "x").tolist() == [0, 1, 0]
    with pytest.raises(DataError, match="not ones the classifier knows"):
        C.category_labels(sk, ("square", "circle"), "x")
    assert C.category_labels(Sketches.from_list([square()]), ("a",), "x").tolist() == [0]
    with pytest.raises(DataError, match="no category"):
        C.category_labels(Sketches.from_list([square()]), ("a", "b"), "x")


# ------------------------------------------------------------------------------------ run dirs


def test_save_load_roundtrip_and_refusals(tmp_path):
    torch.manual_seed(0)
    cfg = C.ClassifierConfig(categories=("square", "zigzag"), scale_factor=3.5)
    net = C.SketchANet(2)
    C.save_classifier(tmp_path / "clf", net, cfg, C.TrainConfig(), {"best_valid_accuracy": 0.5})
    saved = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert saved["model"] == "sketch-a-net" and saved["classifier"]["input_size"] == 225
    judge = C.load_classifier(tmp_path / "clf", device="cpu")
    assert judge.categories == ("square", "zigzag") and judge.config.scale_factor == 3.5
    x = torch.rand(1, 1, 225, 225)
    with torch.no_grad():
        assert torch.allclose(judge.model(x), net.eval()(x))
    assert not list((tmp_path / "clf").glob(".tmp-*"))                 # atomic writes cleaned up

    other = tmp_path / "rnn"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model": "sketch-rnn"}))
    with pytest.raises(CheckpointError, match="run of model 'sketch-rnn'"):
        C.load_classifier(other)
    with pytest.raises(CheckpointError, match="run of model 'sketch-rnn'"):
        C.save_classifier(other, net, cfg)
    with pytest.raises(CheckpointError, match="no such run"):
        C.load_classifier(tmp_path / "nope")
    (tmp_path / "clf" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        C.load_classifier(tmp_path / "clf")


def _toy_set(n_per_class, rng):
    sk, cat = [], []
    for i in range(n_per_class):
        sk.append(square(rng.uniform(5, 15)))
        sk.append(zigzag(int(rng.integers(4, 8))))
        cat += [0, 1]
    return Sketches.from_list(sk, category=cat, category_names=("square", "zigzag"))


@pytest.mark.slow
def test_train_classifier_writes_a_run(tmp_path, rng):
    cfg = C.ClassifierConfig(categories=("square", "zigzag"))
    tc = C.TrainConfig(epochs=2, batch_size=4, max_steps=3, eval_batch_size=8)
    metrics = C.train_classifier(_toy_set(3, rng), _toy_set(2, rng), tmp_path / "clf", cfg, tc,
                                 device="cpu", progress=False)
    assert [h["step"] for h in metrics["history"]] == [2, 3]           # 6 sketches / 4 per step
    assert 0 <= metrics["best_valid_accuracy"] <= 1
    for f in ("config.json", "model.safetensors", "metrics.json", "log.csv"):
        assert (tmp_path / "clf" / f).is_file()
    assert json.loads((tmp_path / "clf" / "config.json").read_text())["train"]["max_steps"] == 3
    assert len((tmp_path / "clf" / "log.csv").read_text().strip().splitlines()) == 3
    C.load_classifier(tmp_path / "clf", device="cpu")


@pytest.mark.slow
def test_training_separates_two_shapes(tmp_path, rng):
    cfg = C.ClassifierConfig(categories=("square", "zigzag"))
    tc = C.TrainConfig(epochs=6, batch_size=8, lr=3e-4, eval_batch_size=16, stretch=0, drop_prob=0)
    data = _toy_set(4, rng)
    metrics = C.train_classifier(data, data, tmp_path / "clf", cfg, tc, device="cpu", progress=False)
    assert metrics["best_valid_accuracy"] == 1.0
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]


# ------------------------------------------------------------------------------ feature extractors


def test_extract_batches_give_the_same_features_as_one_batch():
    torch.manual_seed(0)
    judge = C.SketchANetFeatures(C.SketchANet(2), C.ClassifierConfig(categories=("a", "b")), "cpu",
                                 batch_size=2)
    sk = [square(), zigzag(), square(5), zigzag(4, 3)]
    feats, logits = judge.extract(sk)
    assert feats.shape == (4, 512) and logits.shape == (4, 2)
    with torch.no_grad():
        f1, l1 = judge.features_and_logits(judge.images(sk))
    assert np.allclose(feats, f1.numpy(), atol=1e-5) and np.allclose(logits, l1.numpy(), atol=1e-5)


def test_make_extractor_and_missing_inception_weights(tmp_path):
    judge = C.SketchANetFeatures(C.SketchANet(2), C.ClassifierConfig(categories=("a", "b")), "cpu")
    assert C.make_extractor(None, judge) is judge
    assert C.make_extractor("classifier", judge) is judge
    with pytest.raises(ConfigError, match="unknown feature extractor"):
        C.make_extractor("vgg16", judge)
    with pytest.raises(CheckpointError, match="never downloads weights"):
        C.make_extractor(f"inception:{tmp_path / 'pt_inception.pth'}", judge)


def test_inception_matches_the_reference_layout_and_refuses_foreign_weights(tmp_path):
    from sketchlab.eval.inception import FIDInceptionV3, InceptionFeatures

    net = FIDInceptionV3()
    # torchvision's Inception-v3 without the aux head has 23,834,568 parameters with 1000
    # classes; the FID graph has 1008 (8 more rows of 2048 weights and 8 biases).
    assert sum(p.numel() for p in net.parameters()) == 23_834_568 + 8 * 2049
    assert len(net.state_dict()) == 566
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
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
    cfg = C.ClassifierConfig(categories=("square", "zigzag"))
    sk = [square(), zigzag(), square(7), zigzag(5, 4)]
    cpu = C.classifier_images(sk, cfg, CPU)
    gpu = C.classifier_images(sk, cfg, torch.device("cuda")).cpu()
    # the GPU rasterizer may anti-alias differently by a grey level or two, not more
    assert (gpu - cpu).abs().mean() < 0.01
    tc = C.TrainConfig(epochs=1, batch_size=4, max_steps=2)
    metrics = C.train_classifier(_toy_set(4, rng), _toy_set(2, rng), tmp_path / "clf", cfg, tc,
                                 device="cuda", progress=False)
    assert np.isfinite(metrics["history"][-1]["train_loss"])
    torch.manual_seed(0)
    net = C.SketchANet(2)
    a = C.SketchANetFeatures(net, cfg, "cpu").extract(sk)[0]
    b = C.SketchANetFeatures(net, cfg, "cuda").extract(sk)[0]
    assert np.allclose(a, b, rtol=0.05, atol=0.05)


def test_cudnn_autotune_is_scoped_to_the_training_run():
    before = torch.backends.cudnn.benchmark
    seen = C._cudnn_autotuned(lambda: torch.backends.cudnn.benchmark)()
    assert seen is True and torch.backends.cudnn.benchmark == before

    def fails():
        raise ValueError("boom")

    with pytest.raises(ValueError):
        C._cudnn_autotuned(fails)()
    assert torch.backends.cudnn.benchmark == before
