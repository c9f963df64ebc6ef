#!/usr/bin/env python
"""Training-step benchmark of RPCL-pix2seq / RPCL-pix2seqH at the seeds' defaults.

One step = rasterise the batch on the device (48x48), CNN encoder, prior posterior + staged
EM/RPCL update, HyperLSTM-2048 decoder over max_seq_len steps, mixture NLL, image decoder,
backward, per-element clipping, Adam (beta1 0.5), prior write. Batch 200 (the seeds' code default),
z 128, HyperLSTM 2048 with recurrent dropout 0.9, length --length (the seeds use the longest
sketch of the data; 250 is QuickDraw's usual cap). Variants, timed in the same run:

  reference        fp32, the decoder's plain per-timestep loop under autograd (`fast_path="reference"`)
  bptt             fp32, the fast decoder path (hoisted input GEMM, hand-written BPTT, fused pointwise)
  bptt+bf16        the same under bf16 autocast: what `sketchlab train` runs on CUDA (amp=True)
  bptt+bf16+graph  the whole step (from the rasterised images on) captured in ONE CUDA graph; the
                   rasteriser (host-side input checks) runs outside it and is added to the total
  trainer          `sketchlab.train.Trainer` end to end (bf16 amp, bptt, its per-step host syncs,
                   background make_batch), ms per step over --trainer-iters steps after 20
                   (H with image_phase_steps=0: every step a sequence step, the steady state)

Before timing it checks, on the device: bptt vs reference (fp32, same dropout masks and noise)
loss and every gradient; bptt+bf16 vs the fp32 reference; a graph replay vs eager steps (two Adam
steps, with the noise switched off so both are deterministic). Step-dependent branches are baked
into a graph: the pix2seq step is an EM step (s = 1000), the H step a sequence-phase step
(s = 1001); a training loop using graphs needs one graph per branch (EM/RPCL x phase).

JSON to stdout and to $OUT/rpcl.json (rewritten after every result).

  python benchmarks/rpcl.py                      # both models on CUDA (smoke run on CPU)
  python benchmarks/rpcl.py --models rpcl-pix2seq --length 200 --variants bptt+bf16,bptt+bf16+graph
  python benchmarks/rpcl.py --smoke              # tiny sizes, < 1 min on CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from rnn import compare, error_text, free, log, time_variant, timed, without_tf32  # noqa: E402  (benchmarks/rnn.py)

from report import save as save_json  # noqa: E402  (benchmarks/report.py)
from sketchlab.data.sketches import Sketches  # noqa: E402
from sketchlab.data.sketches import Sketches
from sketchlab.models import get_model_class  # noqa: E402
from sketchlab.nn.cudagraph import GraphedStep  # noqa: E402
from sketchlab.train.trainer import PreparedData, Trainer, clip_gradients  # noqa: E402

STEP = {"rpcl-pix2seq": 1000, "rpcl-pix2seqh": 1001}   # an EM step / a sequence-phase step


def random_sketches(n: int, length: int, seed: int = 0) -> list[np.ndarray]:
    """Random-walk stroke-3 sketches of length in [length/2, length], normalised-scale offsets."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = int(rng.integers(max(2, length // 2), length + 1))
        s = np.zeros((m, 3), np.float32)
        s[:, :2] = rng.normal(size=(m, 2))
        s[:, 2] = rng.random(m) < 0.1
        s[-1, 2] = 1
        out.append(s)
    return out


def build(name, args, device):
    cls = get_model_class(name)
    cfg = cls.Config(max_seq_len=args.length, batch_size=args.batch, z_size=args.z,
                     dec_model=args.dec_model, dec_rnn_size=args.hidden,
                     hyper_num_units=args.hyper_units, hyper_embedding_size=args.hyper_emb,
                     cnn_channels=tuple(args.cnn_channels), fuse_pointwise=not args.no_compile)
    torch.manual_seed(0)
    model = cls(cfg).to(device).train()
    model.scale_factor = 1.0
    return model


def make_optimizer(model, device, capturable=False):
    kw = {"lr": 1e-3, "betas": (0.5, 0.999)}
    if device.type == "cuda":
        kw.update(fused=True, capturable=capturable)
    return torch.optim.Adam(model.parameters(), **kw)


def make_step(model, opt, step_no, bf16, device, graph=False):
    """fwd + loss + bwd + clip + Adam + prior write. In a graph the prior's staged state is
    copied into the buffers directly (on_step_end's finiteness check needs a host sync)."""
    params = list(model.parameters())

    def step(batch):
        opt.zero_grad(set_to_none=False)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model.loss(batch, step_no)
        out["loss"].backward()
        clip_gradients(params, "value", 1.0)
        opt.step()
        if graph:
            with torch.no_grad():
                for buf, new in zip(model.prior.state(), model.prior._pending):
                    buf.copy_(new)
        else:
            model.on_step_end(step_no)
        return out["loss"].detach()

    return step


GRAPH_KEYS = ("strokes", "image")   # the static inputs of a graphed step (images rasterised outside)


def graph_step(model, opt, step_no, device):
    """`GraphedStep` over the batch tensors (it copies tensors, not dicts) of a bf16 step."""
    step = make_step(model, opt, step_no, True, device, graph=True)
    return lambda *tensors: step(dict(zip(GRAPH_KEYS, tensors)))


def graph_inputs(batch):
    return tuple(batch[k] for k in GRAPH_KEYS)


def loss_and_grads(model, batch, step_no, seed, bf16=False):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autocast(batch["strokes"].device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model.loss(batch, step_no)["loss"]
    loss.backward()
    model.prior._pending = None
    return loss.item(), {n: p.grad.detach().float().clone() for n, p in model.named_parameters()
                         if p.grad is not None}


def deterministic(model):
    """No reparameterisation noise and no recurrent dropout (for graph-vs-eager checks)."""
    def latent(self, batch):
        x, mu, var = self.encode_dist(batch)
        return x, mu, var, mu + 0.0 * var
    model.latent = types.MethodType(latent, model)
    model.decoder.recurrent_dropout_keep = 1.0


def bench_model(name, args, device):
    res = {"model": name, "batch": args.batch, "length": args.length, "hidden": args.hidden,
           "dec_model": args.dec_model, "z": args.z, "step": STEP[name],
           "ms": {}, "parity": {}, "errors": {}, "peak_mem_gb": {}}
    cuda = device.type == "cuda"
    model = build(name, args, device)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sketches = random_sketches(args.batch, args.length)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    cpu_batch = model.make_batch(sketches, True, rng)
    res["make_batch_cpu_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    batch = {k: v.to(device) for k, v in cpu_batch.items()}
    res["raster_ms"] = round(timed(lambda: model.images(batch), args.iters, 1, device), 3)
    s = STEP[name]

    def reset():
        model.load_state_dict(init)
        model.decoder.fast_path = "auto"
        model.__dict__.pop("latent", None)
        model.decoder.recurrent_dropout_keep = 0.9

    # ---- parity (fp32 without TF32; same masks and noise) --------------------------------
    try:
        with without_tf32():
            model.decoder.fast_path = "reference"
            ref = loss_and_grads(model, batch, s, seed=1)
            model.decoder.fast_path = "bptt"
            res["parity"]["bptt_vs_reference_fp32"] = compare(ref, loss_and_grads(model, batch, s, seed=1))
            if cuda:
                res["parity"]["bptt_bf16_vs_reference_fp32"] = compare(
                    ref, loss_and_grads(model, batch, s, seed=1, bf16=True), norm=True)
            del ref
    except Exception as e:
        res["errors"]["parity"] = error_text(e)
        log(traceback.format_exc())
    reset()
    model.zero_grad(set_to_none=True)
    free(device)

    image_batch = dict(batch, image=model.images(batch))
    if cuda and "bptt+bf16+graph" in args.variants and not args.no_graph_check:
        try:
            deterministic(model)
            opt = make_optimizer(model, device, capturable=True)
            graphed = GraphedStep(graph_step(model, opt, s, device), graph_inputs(image_batch))
            snap = {k: v.detach().clone() for k, v in model.state_dict().items()}
            opt_snap = {k: {kk: vv.clone() if torch.is_tensor(vv) else vv for kk, vv in st.items()}
                        for k, st in opt.state.items()}
            lg = [graphed(*graph_inputs(image_batch)).item() for _ in range(2)]
            after_graph = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(snap)
            for k, st in opt.state.items():
                for kk, vv in opt_snap[k].items():
                    st[kk].copy_(vv) if torch.is_tensor(vv) else st.__setitem__(kk, vv)
            eager = make_step(model, opt, s, True, device, graph=True)
            le = [eager(image_batch).item() for _ in range(2)]
            after_eager = model.state_dict()
            err = max(((after_graph[k].float() - after_eager[k].float()).abs().max()
                       / after_eager[k].float().abs().max().clamp_min(1e-30)).item() for k in after_eager)
            prior_err = max((after_graph[k] - after_eager[k]).abs().max().item()
                            for k in after_eager if k.startswith("prior."))
            res["parity"]["graph_vs_eager_2_steps"] = {
                "loss_rel": max(abs(a - b) / abs(b) for a, b in zip(lg, le)),
                "state_rel_max": err, "prior_abs_max": prior_err}
            del graphed, opt, eager
        except Exception as e:
            res["errors"]["graph_check"] = error_text(e)
            log(traceback.format_exc())
        reset()
        model.zero_grad(set_to_none=True)
        free(device)

    # ---- timings ------------------------------------------------------------------------------
    for variant in args.variants:
        if variant == "trainer":
            continue
        graph = "+graph" in variant
        if graph and not cuda:
            res["errors"][variant] = "skipped: CUDA graphs need a CUDA device"
            continue
        bf16 = "+bf16" in variant and cuda
        reset()
        model.decoder.fast_path = "reference" if variant == "reference" else "bptt"
        iters = args.ref_iters if variant == "reference" else args.iters

        def make_variant(graph=graph, bf16=bf16):
            opt = make_optimizer(model, device, capturable=graph)
            if graph:
                graphed = GraphedStep(graph_step(model, opt, s, device), graph_inputs(image_batch))
                return (lambda: graphed(*graph_inputs(image_batch))), (opt, graphed)
            step = make_step(model, opt, s, bf16, device)
            return (lambda: step(batch)), opt   # rasterises inside loss

        ms = time_variant(res, name, variant, make_variant, iters,
                          1 if variant == "reference" else args.warmup, device)
        if ms is not None and graph:   # the graph replays a pre-rasterised batch: add it back
            res["ms"][variant + " (without raster)"] = round(ms, 3)
            res["ms"][variant] = round(ms + res["raster_ms"], 3)
        model.zero_grad(set_to_none=True)
        free(device)

    if "trainer" in args.variants:
        try:
            res["ms"]["trainer"] = round(bench_trainer(name, args, device), 3)
            log(f"{name} trainer: {res['ms']['trainer']:.2f} ms/step")
        except Exception as e:
            res["errors"]["trainer"] = error_text(e)
            log(traceback.format_exc())
        free(device)
    ref_ms = res["ms"].get("reference")
    if ref_ms:
        res["speedup_vs_reference"] = {k: round(ref_ms / v, 2) for k, v in res["ms"].items()
                                       if k != "reference" and "without" not in k}
    res["fusion"] = dataclasses.asdict(model.decoder.fusion)  # with the error that turned it off, if any
    return res


def bench_trainer(name, args, device) -> float:
    """ms per step of the real Trainer in its steady state: one run of 20 + --trainer-iters steps,
    timed from the trainer's own log (elapsed at each 20th step), so the first 20 steps (CUDA
    graph capture, compilation, allocator warm-up) are left out."""
    import csv

    cls = get_model_class(name)
    first, steps = 20, 20 + args.trainer_iters
    n = args.batch * (steps + 1)
    train = Sketches.from_list(random_sketches(n, args.length, seed=1), category=0, category_names=("random",))
    valid = Sketches.from_list(random_sketches(args.batch, args.length, seed=2), category=0, category_names=("random",))
    cfg = cls.Config(max_seq_len=args.length, batch_size=args.batch, z_size=args.z,
                     dec_model=args.dec_model, dec_rnn_size=args.hidden, hyper_num_units=args.hyper_units,
                     hyper_embedding_size=args.hyper_emb, cnn_channels=tuple(args.cnn_channels),
                     fuse_pointwise=not args.no_compile, max_valid_batches=1, checkpoint_every=10**9, patience=0, reload_best=False,
                     eval_every=10**9)
    if hasattr(cfg, "image_phase_steps"):   # H: time the steady state (sequence steps), not s < 1000
        cfg.image_phase_steps = 0
    data = PreparedData({"train": train, "valid": valid}, 1.0, ("random",), cfg)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        Trainer(cls(cfg), data, tmp, device=device, max_steps=steps, progress=False,
                log=lambda m: None).train()
        with open(Path(tmp) / "log.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("loss") and int(r["step"]) >= first]
    if len(rows) < 2:
        raise RuntimeError("the trainer logged fewer than two steps after the warm-up")
    a, b = rows[0], rows[-1]
    return (float(b["elapsed"]) - float(a["elapsed"])) / (int(b["step"]) - int(a["step"])) * 1000.0


ALL_VARIANTS = ["reference", "bptt", "bptt+bf16", "bptt+bf16+graph", "trainer"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="rpcl-pix2seq,rpcl-pix2seqh")
    ap.add_argument("--variants", default=",".join(ALL_VARIANTS), help=f"subset of {ALL_VARIANTS}")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--length", type=int, default=250)
    ap.add_argument("--z", type=int, default=128)
    ap.add_argument("--dec-model", default="hyper")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--hyper-units", type=int, default=256)
    ap.add_argument("--hyper-emb", type=int, default=32)
    ap.add_argument("--cnn-channels", default="32,64,128,256")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--trainer-iters", type=int, default=60,
                    help="steady-state steps the `trainer` variant times (after 20 warm-up steps)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--ref-iters", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true", help="no torch.compile fusion in the decoder")
    ap.add_argument("--no-graph-check", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (the default without CUDA)")
    ap.add_argument("--full", action="store_true", help="full sizes even without CUDA")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.smoke or (device.type == "cpu" and not args.full):
        args.smoke = True
        args.batch, args.length, args.z, args.hidden = 8, 24, 8, 32
        args.hyper_units, args.hyper_emb, args.cnn_channels = 16, 8, "8,8,16,16"
        args.iters, args.warmup, args.ref_iters, args.trainer_iters = 3, 1, 2, 20
        args.threads = args.threads or 1
    if args.threads:
        torch.set_num_threads(args.threads)
    args.cnn_channels = [int(c) for c in str(args.cnn_channels).split(",")]
    args.variants = [v for v in args.variants.split(",") if v]
    report = {"benchmark": "rpcl", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "smoke": args.smoke, "threads": torch.get_num_threads(),
              "args": vars(args), "results": [],
              "notes": "ms = one training step incl. on-device rasterisation. fp32 variants without TF32 "
                       "matmuls (PyTorch default; cuDNN convs use TF32). Parity checks with TF32 off."}

    def save():
        save_json(report, "rpcl", indent=1)

    t0 = time.perf_counter()
    for name in [m for m in args.models.split(",") if m]:
        try:
            r = bench_model(name, args, device)
        except Exception as e:
            r = {"model": name, "errors": {"all": error_text(e)}}
            log(traceback.format_exc())
        report["results"].append(r)
        save()
        free(device)
    report["total_s"] = round(time.perf_counter() - t0, 1)
    save()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
