#!/usr/bin/env python
"""Benchmark of the sketch-rnn sequence engine (sketchlab.nn.cells + sketchlab.nn.mixture).

Training step: a sketch-rnn-style decoder (state0 = tanh(Linear(z)), input [S_{t-1}, z],
cell, 20-component mixture head, mixture NLL, backward, Adam) at batch 100, length 250, z 128,
for each cell kind and size. Variants, timed in the same run:

  reference        eager per-timestep loop of `cell.step` under autograd (fp32)
  bptt             the fast path: hoisted input GEMM, hand-written BPTT, fused pointwise (fp32)
  bptt+bf16        the same under bf16 autocast (GEMMs bf16, state/pointwise fp32)
  bptt+graph       the whole training step (fwd + loss + bwd + Adam) captured in one CUDA graph
  bptt+graph+bf16  both (bptt+graph+tf32: fp32 storage, TF32 GEMMs)
  cudnn[+graph]    LSTM only, recurrent dropout OFF (keep 1.0): torch.lstm / cuDNN
  reference+graph  (--ref-graph) the reference loop in a whole-step CUDA graph

Before timing, on the same device, it checks the fast paths against the reference: loss and every
parameter gradient in fp32 (TF32 off; same dropout masks), bf16 against the fp32 reference, and
a graph replay against an eager step from the same weights (dropout masks of ones so both are
deterministic). Anything that fails (compile, capture, out of memory) is reported with the
reason and the rest goes on. Batched sampling: LSTM-512 sketches of length 250 generated on the
device for a whole batch (CUDA-graphed and eager) against a one-sketch-at-a-time sampler written
like magenta's `sample()` (NumPy sampling, one host round trip per step).

JSON goes to stdout and, when $OUT is set, to $OUT/rnn.json (rewritten after every result, so a
run cut short keeps what it measured).

  python benchmarks/rnn.py                        # full run on CUDA; smoke run on CPU
  python benchmarks/rnn.py --cells hyper --sizes 2048
  python benchmarks/rnn.py --only-sample
  python benchmarks/rnn.py --smoke                # tiny sizes, < 1 min on CPU
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from report import save  # noqa: E402  (benchmarks/report.py)
from sketchlab.nn.cells import make_cell  # noqa: E402
from sketchlab.nn.cudagraph import GraphedStep  # noqa: E402
from sketchlab.nn.mixture import MixtureHead, mixture_nll, sample_step, split_params  # noqa: E402
from sketchlab.nn.sampler import BatchedSampler  # noqa: E402


# --------------------------------------------------------------------------------------------
# The decoder under test
# --------------------------------------------------------------------------------------------


class Decoder(nn.Module):
    """The sketch-rnn / RPCL decoder wiring around a cell (no encoder: z is an input)."""

    def __init__(self, kind, hidden, z_size, keep, hyper_units, hyper_emb, fusion=True):
        super().__init__()
        self.cell = make_cell(kind, 5 + z_size, hidden, recurrent_dropout_keep=keep, hyper_num_units=hyper_units, hyper_embedding_size=hyper_emb, fusion=fusion)
        self.init_state = nn.Linear(z_size, self.cell.state_size)
        self.head = MixtureHead(hidden)

    def loss(self, strokes, z, path):
        B, T1, _ = strokes.shape
        state0 = torch.tanh(self.init_state(z))
        x = torch.cat([strokes[:, :-1], z[:, None, :].expand(B, T1 - 1, z.shape[1])], -1)
        hs, _ = self.cell.sequence(x, state0, fast=path)
        return mixture_nll(self.head(hs), strokes[:, 1:], training=True)


def random_batch(B, T, z_size, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    strokes = torch.zeros(B, T + 1, 5)
    strokes[:, 0, 2] = 1  # S_0
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    for b in range(B):
        n = int(lengths[b])
        strokes[b, 1 : n + 1, :2] = torch.randn(n, 2, generator=g)
        pen = (torch.rand(n, generator=g) < 0.1).long()
        strokes[b, 1 : n + 1, 2 + pen] = 1  # pen down or lifted
        strokes[b, n + 1 :, 4] = 1  # padding: end of sketch
    z = torch.randn(B, z_size, generator=g)
    return strokes.to(device), z.to(device)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, iters, warmup, device):
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters * 1000.0


def make_optimizer(model, device, capturable):
    kw = {"lr": 1e-3}
    if device.type == "cuda":
        kw.update(fused=True, capturable=capturable)
    return torch.optim.Adam(model.parameters(), **kw)


def make_step(model, opt, path, bf16, device):
    def step(strokes, z):
        opt.zero_grad(set_to_none=False)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(strokes, z, path)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def snapshot(model, opt):
    return [p.detach().clone() for p in model.parameters()], [
        {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()} for st in opt.state.values()
    ]


def restore(model, opt, snap):
    with torch.no_grad():
        for p, s in zip(model.parameters(), snap[0]):
            p.copy_(s)
        for st, saved in zip(opt.state.values(), snap[1]):
            for k, v in saved.items():
                if torch.is_tensor(st[k]):
                    st[k].copy_(v)
                else:
                    st[k] = v


def loss_and_grads(model, path, strokes, z, seed, bf16=False):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # identical dropout masks across paths
    with torch.autocast(strokes.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model.loss(strokes, z, path)
    loss.backward()
    return loss.item(), {n: p.grad.detach().float().clone() for n, p in model.named_parameters()}


def compare(ref, other, norm=False):
    """Relative error of the loss and the worst parameter gradient (max-abs or norm based)."""
    (l0, g0), (l1, g1) = ref, other
    errs = {}
    for n in g0:
        a, b = g0[n].double(), g1[n].double()
        errs[n] = ((a - b).norm() / a.norm().clamp_min(1e-30)).item() if norm else ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()
    worst = max(errs, key=errs.get)
    return {"loss_rel": abs(l1 - l0) / max(abs(l0), 1e-30), "grad_rel_max": errs[worst], "worst_param": worst, "metric": "norm" if norm else "max-abs"}


def error_text(e):
    return f"{type(e).__name__}: {e}"[:400]


def free(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


class Report:
    def __init__(self, meta):
        self.data = {**meta, "train": [], "sample": None}

    def save(self):
        save(self.data, "rnn", indent=1)


@contextlib.contextmanager
def without_tf32():
    """fp32 matmuls and convolutions for parity checks (restores the previous flags)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def time_variant(res: dict, label: str, variant: str, build, iters: int, warmup: int,
                 device) -> float | None:
    """Time one variant of a training step into `res` (its "ms", "peak_mem_gb", "capture_s" or
    "errors"). `build()` makes the optimizer and step and returns (step_fn, what to keep alive);
    for a "+graph" variant its time is the capture time. The step's loss must be finite.
    Returns ms per step, or None after recording the error."""
    cuda = device.type == "cuda"
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fn, _alive = build()
        if "+graph" in variant:
            res.setdefault("capture_s", {})[variant] = round(time.perf_counter() - t0, 2)
        ms = timed(fn, iters, warmup, device)
        loss = fn().item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss}")
        res["ms"][variant] = round(ms, 3)
        if cuda:
            res["peak_mem_gb"][variant] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        log(f"{label} {variant}: {ms:.2f} ms/step")
        return ms
    except Exception as e:
        res["errors"][variant] = error_text(e)
        log(f"{label} {variant} failed: {error_text(e)}")
        return None


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Training-step benchmark
# --------------------------------------------------------------------------------------------


def bench_train(kind, hidden, args, device):
    res = {"cell": kind, "hidden": hidden, "batch": args.batch, "length": args.length, "z": args.z, "recurrent_dropout_keep": args.keep}
    res.update(ms={}, parity={}, errors={}, peak_mem_gb={})
    strokes, z = random_batch(args.batch, args.length, args.z, device)
    torch.manual_seed(0)
    model = Decoder(kind, hidden, args.z, args.keep, args.hyper_units, args.hyper_emb, fusion=not args.no_compile).to(device).train()
    init = [p.detach().clone() for p in model.parameters()]
    cuda = device.type == "cuda"

    def reset():
        with torch.no_grad():
            for p, s in zip(model.parameters(), init):
                p.copy_(s)
        model.cell.recurrent_dropout_keep = args.keep

    # ---- parity on the device: fast vs reference, fp32 (no TF32), same dropout masks --------
    tf32 = torch.backends.cuda.matmul.allow_tf32   # restored after each timed variant
    try:
        with without_tf32():
            ref = loss_and_grads(model, "reference", strokes, z, seed=1)
            res["parity"]["bptt_vs_reference_fp32"] = compare(ref, loss_and_grads(model, "bptt", strokes, z, seed=1))
            res["parity"]["bptt_bf16_vs_reference_fp32"] = compare(ref, loss_and_grads(model, "bptt", strokes, z, seed=1, bf16=True), norm=True)
            if kind == "lstm":
                model.cell.recurrent_dropout_keep = 1.0
                ref1 = loss_and_grads(model, "reference", strokes, z, seed=1)
                res["parity"]["cudnn_vs_reference_fp32_nodropout"] = compare(ref1, loss_and_grads(model, "cudnn", strokes, z, seed=1))
                model.cell.recurrent_dropout_keep = args.keep
            del ref
    except Exception as e:
        res["errors"]["parity"] = error_text(e)
        log(traceback.format_exc())
    model.zero_grad(set_to_none=True)
    free(device)

    # ---- graph replay vs eager step, fp32 -------------------------------------------------------
    # Dropout masks of ones: deterministic (graph and eager draw different random numbers) while
    # running exactly the kernels of a dropout step (no extra compile).
    if cuda and "bptt+graph" in args.variants and not args.no_graph_check:
        try:
            reset()
            H = hidden
            model.cell.draw_dropout_masks = lambda steps, batch, dev, dtype=torch.float32: torch.ones(steps, batch, H, device=dev, dtype=dtype)
            opt = make_optimizer(model, device, capturable=True)
            step = make_step(model, opt, "bptt", False, device)
            graphed = GraphedStep(step, (strokes, z))
            snap = snapshot(model, opt)
            lg = [graphed(strokes, z).item() for _ in range(2)]
            pg = [p.detach().clone() for p in model.parameters()]
            restore(model, opt, snap)
            le = [step(strokes, z).item() for _ in range(2)]
            perr = max(((a - p).abs().max() / a.abs().max().clamp_min(1e-30)).item() for a, p in zip(pg, model.parameters()))
            res["parity"]["graph_vs_eager_2_adam_steps"] = {"loss_rel": max(abs(a - b) / abs(b) for a, b in zip(lg, le)), "param_rel_max": perr}
            del graphed, opt, step, snap, pg
        except Exception as e:
            res["errors"]["graph_check"] = error_text(e)
            log(traceback.format_exc())
        finally:
            del model.cell.draw_dropout_masks  # back to the class method
        model.zero_grad(set_to_none=True)
        free(device)

    # ---- timings ------------------------------------------------------------------------------
    for variant in args.variants:
        if variant.startswith("cudnn") and kind != "lstm":
            continue
        graph = "+graph" in variant
        if graph and not cuda:
            res["errors"][variant] = "skipped: CUDA graphs need a CUDA device"
            continue
        bf16 = "+bf16" in variant
        torch.backends.cuda.matmul.allow_tf32 = "+tf32" in variant
        path = variant.split("+")[0]
        reset()
        if path == "cudnn":
            model.cell.recurrent_dropout_keep = 1.0  # cuDNN has no candidate dropout
        iters = args.ref_iters if path == "reference" else args.iters

        def make_variant(graph=graph, path=path, bf16=bf16):
            opt = make_optimizer(model, device, capturable=graph)
            step = make_step(model, opt, path, bf16, device)
            if graph:
                graphed = GraphedStep(step, (strokes, z))
                return (lambda: graphed(strokes, z)), (opt, graphed)
            return (lambda: step(strokes, z)), opt

        time_variant(res, f"{kind}-{hidden}", variant, make_variant, iters,
                     1 if path == "reference" else args.warmup, device)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        model.zero_grad(set_to_none=True)
        free(device)
    ref_ms = res["ms"].get("reference")
    if ref_ms:
        res["speedup_vs_reference"] = {k: round(ref_ms / v, 2) for k, v in res["ms"].items() if k != "reference"}
    if "bptt+graph" in res["ms"] and "bptt+graph+bf16" in res["ms"]:
        res["bf16_speedup_graph"] = round(res["ms"]["bptt+graph"] / res["ms"]["bptt+graph+bf16"], 2)
    res["fusion"] = dataclasses.asdict(model.cell.fusion)  # with the error that turned it off, if any
    return res


# --------------------------------------------------------------------------------------------
# Sampling benchmark
# --------------------------------------------------------------------------------------------


def adjust_temp(pdf, temp):
    pdf = np.log(pdf) / temp
    pdf -= pdf.max()
    pdf = np.exp(pdf)
    return pdf / pdf.sum()


def get_pi_idx(x, pdf, temp):
    pdf = adjust_temp(np.copy(pdf), temp)
    acc = 0.0
    for i in range(pdf.size):
        acc += pdf[i]
        if acc >= x:
            return i
    return -1


def sample_one_at_a_time(cell, head, z1, state, n_steps, temperature, np_rng):
    """magenta `sample()`: batch 1, one host round trip and NumPy sampling per step."""
    device = z1.device
    prev = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]], device=device)
    rows = np.zeros((n_steps, 5), np.float32)
    for t in range(n_steps):
        h, state = cell.step(torch.cat([prev, z1], 1), state)
        p = split_params(head(h)[0])
        pi, pen = p.pi.cpu().numpy().astype(np.float64), p.pen.cpu().numpy().astype(np.float64)
        mx, my, sx, sy, rho = (v.cpu().numpy() for v in (p.mu_x, p.mu_y, p.sigma_x, p.sigma_y, p.rho))
        idx = get_pi_idx(random.random(), pi, temperature)
        eos = np.zeros(3, np.float32)
        eos[get_pi_idx(random.random(), pen, temperature)] = 1
        s1, s2 = sx[idx] * temperature, sy[idx] * temperature
        cov = [[s1 * s1, rho[idx] * s1 * s2], [rho[idx] * s1 * s2, s2 * s2]]
        dx, dy = np_rng.multivariate_normal([mx[idx], my[idx]], cov)
        rows[t] = [dx, dy, *eos]
        prev = torch.tensor([[dx, dy, *eos]], device=device, dtype=torch.float32)
    return rows


def bench_sample(args, device):
    H, Z, L = args.sample_hidden, args.z, args.sample_length
    torch.manual_seed(0)
    cell = make_cell("lstm", 5 + Z, H, recurrent_dropout_keep=0.9).to(device).eval()
    head = MixtureHead(H).to(device)
    init = nn.Linear(Z, cell.state_size).to(device)
    res = {"cell": "lstm", "hidden": H, "length": L, "temperature": args.temperature, "batched": [], "errors": {}, "checks": {}}
    use_graph = device.type == "cuda" and not args.no_graph
    with torch.no_grad():
        # Checks: greedy batched == greedy one at a time (first sketches); graph == eager.
        zc = torch.randn(4, Z, device=device)
        s0 = torch.tanh(init(zc))
        try:
            out = BatchedSampler(cell, head, L, greedy=True, use_graph=use_graph)(s0, zc)
            ref = []
            for b in range(4):
                state, prev, rows = s0[b : b + 1], torch.tensor([[0.0, 0.0, 1, 0, 0]], device=device), []
                for _ in range(min(L, 60)):
                    h, state = cell.step(torch.cat([prev, zc[b : b + 1]], 1), state)
                    prev = sample_step(head(h), greedy=True)
                    rows.append(prev)
                ref.append(torch.cat(rows))
            ref = torch.stack(ref)
            n = ref.shape[1]
            res["checks"]["greedy_batched_vs_one_at_a_time_60_steps"] = {
                "pen_equal": bool(torch.equal(out[:, :n, 2:], ref[..., 2:])),
                "offset_max_abs_err": (out[:, :n, :2] - ref[..., :2]).abs().max().item(),
            }
            if use_graph:
                g1 = BatchedSampler(cell, head, L, use_graph=True)
                a = g1(s0, zc, args.temperature, torch.Generator(device).manual_seed(3))
                b = BatchedSampler(cell, head, L, use_graph=False)(s0, zc, args.temperature, torch.Generator(device).manual_seed(3))
                res["checks"]["graph_vs_eager_same_noise_max_abs_err"] = (a - b).abs().max().item()
                res["checks"]["graph_error"] = g1.graph_error
        except Exception as e:
            res["errors"]["checks"] = error_text(e)
            log(traceback.format_exc())
        # Batched throughput.
        for B in args.sample_batches:
            z = torch.randn(B, Z, device=device)
            state0 = torch.tanh(init(z))
            gen = torch.Generator(device).manual_seed(0)
            for mode in (["graph"] if use_graph else []) + ["eager"]:
                try:
                    sampler = BatchedSampler(cell, head, L, use_graph=(mode == "graph"))
                    t0 = time.perf_counter()
                    sampler(state0, z, args.temperature, gen)
                    sync(device)
                    first = time.perf_counter() - t0
                    if mode == "graph" and sampler.graph is None:
                        raise RuntimeError(f"graph capture failed: {sampler.graph_error}")
                    ms = timed(lambda: sampler(state0, z, args.temperature, gen), args.sample_iters, 0, device)
                    res["batched"].append({"mode": mode, "batch": B, "ms_per_batch": round(ms, 2), "sketches_per_s": round(B / ms * 1000, 1), "first_call_s": round(first, 2)})
                    log(f"sampling {mode} B={B}: {B / ms * 1000:.0f} sketches/s")
                except Exception as e:
                    res["errors"][f"{mode}-{B}"] = error_text(e)
                    log(f"sampling {mode} B={B} failed: {error_text(e)}")
                free(device)
        # One at a time, like magenta's sample().
        random.seed(0)
        np_rng = np.random.default_rng(0)
        z1 = torch.randn(1, Z, device=device)
        s1 = torch.tanh(init(z1))
        sample_one_at_a_time(cell, head, z1, s1, 5, args.temperature, np_rng)  # warm up
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.sample_ref_n):
            sample_one_at_a_time(cell, head, z1, s1, L, args.temperature, np_rng)
        sync(device)
        per = (time.perf_counter() - t0) / args.sample_ref_n
        res["one_at_a_time"] = {"sketches": args.sample_ref_n, "s_per_sketch": round(per, 4), "sketches_per_s": round(1 / per, 2)}
        best = max((r["sketches_per_s"] for r in res["batched"]), default=None)
        if best:
            res["best_sketches_per_s"] = best
            res["speedup_vs_one_at_a_time"] = round(best * per, 1)
    return res


# --------------------------------------------------------------------------------------------


ALL_VARIANTS = ["reference", "bptt", "bptt+bf16", "bptt+graph", "bptt+graph+tf32", "bptt+graph+bf16", "cudnn", "cudnn+graph"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="lstm,layer_norm,hyper")
    ap.add_argument("--sizes", default="512,2048")
    ap.add_argument("--variants", default=",".join(ALL_VARIANTS), help=f"subset of {ALL_VARIANTS} (+ reference+graph)")
    ap.add_argument("--ref-graph", action="store_true", help="also time the reference loop in a whole-step CUDA graph")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--length", type=int, default=250)
    ap.add_argument("--z", type=int, default=128)
    ap.add_argument("--keep", type=float, default=0.9, help="recurrent dropout keep prob (training default of the originals)")
    ap.add_argument("--hyper-units", type=int, default=256)
    ap.add_argument("--hyper-emb", type=int, default=32)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--ref-iters", type=int, default=2)
    ap.add_argument("--only-train", action="store_true")
    ap.add_argument("--only-sample", action="store_true")
    ap.add_argument("--sample-hidden", type=int, default=512)
    ap.add_argument("--sample-length", type=int, default=250)
    ap.add_argument("--sample-batches", default="1000,5000")
    ap.add_argument("--sample-iters", type=int, default=5)
    ap.add_argument("--sample-ref-n", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.24)
    ap.add_argument("--no-compile", action="store_true", help="no torch.compile fusion of the pointwise step functions")
    ap.add_argument("--no-graph", action="store_true")
    ap.add_argument("--no-graph-check", action="store_true", help="skip the graph-replay-vs-eager check (saves one capture and compile)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CPU smoke run, < 1 min); the default without CUDA")
    ap.add_argument("--full", action="store_true", help="full sizes even without CUDA")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (smoke default 1: tiny GEMMs on a loaded machine are faster on one)")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.smoke or (device.type == "cpu" and not args.full):
        args.smoke = True
        args.sizes, args.batch, args.length, args.z = "32", 8, 20, 8
        args.hyper_units, args.hyper_emb = 16, 8
        args.iters, args.warmup, args.ref_iters = 3, 1, 2
        args.sample_hidden, args.sample_length, args.sample_batches, args.sample_iters, args.sample_ref_n = 32, 20, "64", 2, 2
        args.threads = args.threads or 1
    if args.threads:
        torch.set_num_threads(args.threads)
    args.variants = [v for v in args.variants.split(",") if v]
    if args.ref_graph and "reference+graph" not in args.variants:
        args.variants.append("reference+graph")
    if args.no_graph:
        args.variants = [v for v in args.variants if "+graph" not in v]
    args.sample_batches = [int(b) for b in args.sample_batches.split(",")]

    meta = {
        "benchmark": "rnn",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "smoke": args.smoke,
        "threads": torch.get_num_threads(),
        "args": {k: v for k, v in vars(args).items()},
        "notes": "ms = one training step (fwd + mixture NLL + bwd + Adam). fp32 variants run matmuls "
        "without TF32 (PyTorch default) except +tf32; cudnn variants use cuDNN's default (TF32 on) and "
        "keep=1.0 (no recurrent dropout). Parity checks run with TF32 off.",
    }
    report = Report(meta)
    t_start = time.perf_counter()
    if not args.only_sample:
        for kind in args.cells.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                try:
                    r = bench_train(kind, size, args, device)
                except Exception as e:  # e.g. OOM building the model
                    r = {"cell": kind, "hidden": size, "errors": {"all": error_text(e)}}
                    log(traceback.format_exc())
                report.data["train"].append(r)
                report.save()
                free(device)
    if not args.only_train:
        report.data["sample"] = bench_sample(args, device)
    report.data["total_s"] = round(time.perf_counter() - t_start, 1)
    report.save()
    print(json.dumps(report.data, indent=1))


if __name__ == "__main__":
    main()
