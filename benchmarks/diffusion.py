"""SketchKnitter sampling throughput: plain fp32 eager loop vs the fast path, same run.

The model is the original's default configuration (faithful points-as-channels UNet, 20.33M
parameters, T = 1000, 96 points). For DDPM-1000 and DDIM-30 (the original's "ddim30" stride
schedule) it times, at one batch size (256 as the original's anchor):

* plain: `generate(fast=False)`, the fp32 eager loop (one UNet call + a few elementwise ops per
  step; PyTorch's default TF32 flags, recorded in the output);
* fast: `generate(fast=True)`, bf16 shadow weights, each step (UNet + update) a CUDA graph;
* fast+compile (with `--compile`): the same with torch.compile'd UNet inside the graph;
  `--compile-mode MODE` adds a variant with that inductor mode (e.g. max-autotune-no-cudagraphs).

Deterministic DDIM runs its whole 30-step loop as one CUDA graph; `--per-step` adds the
per-step-graph variants of DDIM for comparison (what sketchlab did before).

Before timing it checks that the fast path agrees with the plain one on deterministic DDIM-30
samples (relative L2 error of the offsets, share of equal pen bits) and on the first step's
noise prediction. Weights: random (the zero-initialised layers re-drawn so outputs depend on the
input) unless `--weights model.safetensors` gives a trained SketchKnitter state dict.

Anchors measured with the original code on an H100, batch 256: DDPM-1000 13.9 sketches/s,
DDIM-30 313 sketches/s. Prints JSON and writes $OUT/diffusion.json when OUT is set.

    python benchmarks/diffusion.py                 # GPU, the full measurement
    python benchmarks/diffusion.py --small         # CPU smoke run (< 1 min)
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import report  # noqa: E402  (benchmarks/report.py)
from sketchlab.models.sketchknitter import Config, SketchKnitter  # noqa: E402

ORIGINAL_ANCHORS = {"ddpm": 13.9, "ddim": 313.0}  # sketches/s, original code, H100, batch 256


def build(args, device) -> SketchKnitter:
    if args.small:
        cfg = Config(faithful=True, num_points=32, model_channels=32, lift_dim=32,
                     channel_mult=(1, 2), num_res_blocks=1, diffusion_steps=args.T)
    else:
        cfg = Config(faithful=not args.corrected, num_res_blocks=args.num_res_blocks,
                     diffusion_steps=args.T)
    torch.manual_seed(0)
    model = SketchKnitter(cfg)
    if args.weights:
        from safetensors.torch import load_file
        model.load_state_dict(load_file(args.weights))
    else:
        # Re-draw the zero-initialised layers (small values) so samples depend on the network.
        with torch.no_grad():
            for name, p in model.unet.named_parameters():
                if p.dim() > 1 and not p.any():
                    p.normal_(0.0, 0.02)
        model.ema.copy_from(model.unet)
    model.set_data_stats(1.0, lengths=np.arange(8, cfg.num_points + 1))
    return model.to(device).eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def whole_loop_graphs(model, enabled: bool):
    """With enabled=False the model's (already created) sampling runners take one graph per step
    instead of one for the whole deterministic loop, for a per-step comparison."""
    runners = [entry[1] for entry in model._fast_cache.values()]
    saved = [r.max_loop_steps for r in runners]
    if not enabled:
        for r in runners:
            r.max_loop_steps = 0
    try:
        yield
    finally:
        for r, limit in zip(runners, saved):
            r.max_loop_steps = limit


def timed(fn, device, repeats: int) -> float:
    """Best wall time of `repeats` calls (after the caller's warm-up)."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def agreement(model, device, batch, steps, compile_):
    gen = lambda: torch.Generator(device).manual_seed(123)  # noqa: E731
    eps = {}
    kw = dict(sampler="ddim", steps=steps, batch_size=batch, device=device)

    def first_eps(key):
        def cb(i, t, x, x0, e, pen):
            if i == 0:
                eps[key] = e.float().clone()
        return cb

    plain = model.generate(batch, fast=False, generator=gen(), callback=first_eps("plain"), **kw)
    fast = model.generate(batch, fast=True, fast_dtype=torch.bfloat16, compile=compile_,
                          generator=gen(), callback=first_eps("fast"), **kw)
    # the callback above forces one graph per step; without it DDIM is one whole-loop graph
    whole = model.generate(batch, fast=True, fast_dtype=torch.bfloat16, compile=compile_,
                           generator=gen(), **kw)
    a, b = plain.points, fast.points
    return {
        "ddim_whole_loop_vs_per_step_rel_l2": float(
            np.linalg.norm(whole.points[:, :2] - b[:, :2]) / np.linalg.norm(b[:, :2])),
        "ddim_rel_l2_offsets": float(np.linalg.norm(b[:, :2] - a[:, :2]) / np.linalg.norm(a[:, :2])),
        "ddim_pen_agreement": float(np.mean(a[:, 2] == b[:, 2])),
        "first_step_eps_rel_l2": float((eps["fast"] - eps["plain"]).norm() / eps["plain"].norm()),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--T", type=int, default=1000, help="diffusion steps (DDPM runs all of them)")
    ap.add_argument("--ddim-steps", type=int, default=30)
    ap.add_argument("--num-res-blocks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per variant (best kept)")
    ap.add_argument("--plain-ddpm-repeats", type=int, default=1,
                    help="the slow eager DDPM-1000 is timed this many times")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile + graphs")
    ap.add_argument("--compile-mode", default=None,
                    help="also time torch.compile with this mode (implies the fast path)")
    ap.add_argument("--per-step", action="store_true",
                    help="also time DDIM with one graph per step instead of one for the loop")
    ap.add_argument("--corrected", action="store_true",
                    help="time the default (masked) model instead of the faithful one")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="torch.backends.cudnn.benchmark = True for every variant")
    ap.add_argument("--weights", help="a trained SketchKnitter state dict (.safetensors)")
    ap.add_argument("--small", action="store_true",
                    help="CPU smoke run: tiny model, T=100, batch 16, DDIM-10")
    args = ap.parse_args(argv)
    if args.small:
        args.T, args.batch, args.ddim_steps, args.repeats = 100, 16, 10, 1
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    model = build(args, device)
    n_params = sum(p.numel() for p in model.unet.parameters())
    result = {
        "benchmark": "sketchknitter_sampling",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "batch": args.batch, "T": args.T, "ddim_steps": args.ddim_steps,
        "faithful": model.config.faithful, "unet_parameters": n_params,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                 "cudnn": torch.backends.cudnn.allow_tf32},
        "cudnn_benchmark": args.cudnn_benchmark,
        "weights": args.weights or "random",
    }
    result["agreement"] = agreement(model, device, args.batch, args.ddim_steps, False)
    if args.compile:
        result["agreement_compile"] = agreement(model, device, args.batch, args.ddim_steps, True)

    bf16 = dict(fast=True, fast_dtype=torch.bfloat16)
    variants = [("plain", dict(fast=False)), ("fast", bf16)]
    if args.compile:
        variants.append(("fast_compile", dict(bf16, compile=True)))
    if args.compile_mode:
        variants.append((f"fast_compile_{args.compile_mode}", dict(bf16, compile=args.compile_mode)))
    # DDIM first (the open question), slow compile modes last in each row, and the JSON
    # rewritten after every measurement: a run cut by its time limit keeps what it measured.
    for name, steps in (("ddim", args.ddim_steps), ("ddpm", None)):
        row = result[name] = {"steps": steps or args.T,
                              "original_anchor_sketches_per_s": ORIGINAL_ANCHORS[name]}
        row_variants = list(variants)
        if name == "ddim" and args.per_step:
            row_variants += [(f"{v}_per_step", dict(kw, max_loop_steps=0))
                             for v, kw in variants[1:]]
        for variant, kw in row_variants:
            kw = dict(kw)
            per_step = kw.pop("max_loop_steps", None) is not None
            def run():
                model.generate(args.batch, sampler=name, steps=steps, batch_size=args.batch,
                               device=device, generator=torch.Generator(device).manual_seed(0),
                               **kw)
            # warm-up: a short run of the same shape (captures the graph / compiles)
            model.generate(args.batch, sampler="ddim", steps=3, batch_size=args.batch,
                           device=device, **kw)
            reps = args.plain_ddpm_repeats if (variant == "plain" and name == "ddpm") else args.repeats
            with whole_loop_graphs(model, enabled=not per_step):
                sec = timed(run, device, reps)
            row[variant] = {"seconds_per_batch": sec, "sketches_per_s": args.batch / sec}
            if variant != "plain":
                row[f"{variant}_speedup_vs_plain"] = row["plain"]["seconds_per_batch"] / sec
                if not args.small and args.batch == 256 and device.type == "cuda":
                    row[f"{variant}_speedup_vs_original_anchor"] = (args.batch / sec
                                                                    / ORIGINAL_ANCHORS[name])
            emit(result, final=False)

    best = {name: max(v for k, v in result[name].items() if k.endswith("_speedup_vs_plain"))
            for name in ("ddpm", "ddim")}
    result["goal"] = {"target_speedup_vs_plain": 5.0, "best_speedup": best,
                      "met": all(v >= 5.0 for v in best.values())}
    emit(result, final=True)
    return result


def emit(result: dict, final: bool) -> None:
    """Print the final JSON; keep $OUT/diffusion.json current after every measurement."""
    (report.emit if final else report.save)(result, "diffusion")


if __name__ == "__main__":
    main()
