#!/usr/bin/env python
"""sketchlab on a CPU: training steps, diffusion sampling and ndjson import, each against its
plain baseline, measured in ONE run (the variants of a section take turns, A B C A B C ..., so a
machine whose load drifts slows them alike; quote the medians and the pairwise ratios).

* rnn: a sketch-rnn decoder training step (state0 = tanh(Linear(z)), input [S_{t-1}, z], cell,
  20-component mixture NLL, backward, Adam; batch 100, length 130, z 128, hidden 256: the
  SPG-apples setting of the CPU trainings) for each cell kind with recurrent dropout (keep 0.9):
    bptt          the default fast path on a CPU (hoisted input GEMM, hand-written BPTT, eager
                  pointwise functions)
    bptt+compile  (--compile) the same with the pointwise functions compiled by torch.compile
                  (inductor's C++ on a CPU; the first step pays the compilation)
    reference     the plain per-timestep loop of `cell.step` under autograd
    native        torch's own LSTM kernel (`torch.lstm`, oneDNN on a CPU) WITHOUT dropout at the
                  same hidden size: an LSTM decoder with keep 1.0 on the "cudnn" path
  Before timing, the fast path's loss and gradients are checked against the reference (same
  dropout masks, fp32).
* diffusion: SketchKnitter's default network (20.3M parameters, 96 points; or with
  `--diffusion-model sketchknitter-spg5` the zoo's 1.4M one) sampling `--batch` sketches: the
  plain fp32 eager loop (`fast=False`) against the fast path (`fast=True`: fp32 static buffers
  on a CPU; `--compile-diffusion` adds torch.compile). A reverse step costs the same at
  every t, so each is timed over `--steps` steps and the sketches/s of DDPM-1000 and DDIM-30 are
  extrapolated from the time per step (both samplers are timed).
* batches: building training batches on the CPU: SP-gra2seq's patch planning of 128 sheep
  (`plan_batch` against the per-sketch `plan_sketch` loop) and SketchGloc's chunking of 100
  (`chunk_batch` against the per-sketch loop `make_batch` ran before), CPU ms per batch.
* import: `sketchlab data import` of the SPG ndjson files with 1 process and with one per core
  (the npz files are compared byte for byte).

Every time is given as wall seconds and as CPU seconds of this process (and its children for
the import); the load average before and after each section is recorded. On a shared machine
the wall times move with the load while the CPU times and the ratios move less.

    python benchmarks/cpu.py                         # everything (~15 min on 2 loaded cores)
    python benchmarks/cpu.py --only rnn --cells lstm --reps 3
    OMP_WAIT_POLICY=PASSIVE python benchmarks/cpu.py # threads sleep at once when idle (see README)

JSON goes to stdout and, when $OUT is set, to $OUT/cpu.json (rewritten after every section).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402  (benchmarks/report.py)
from rnn import Decoder, compare, loss_and_grads, make_optimizer, make_step, random_batch  # noqa: E402
from sketchlab.nn.rnn_pointwise import Fusion  # noqa: E402

CPU = torch.device("cpu")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_seconds(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def summary(values: list[float], scale: float = 1.0, digits: int = 3) -> dict:
    return {"min": round(min(values) * scale, digits), "median": round(statistics.median(values) * scale, digits),
            "max": round(max(values) * scale, digits), "n": len(values)}


def ratios(a: list[float], b: list[float]) -> dict:
    """a / b pair by pair (pairs timed back to back)."""
    r = [x / y for x, y in zip(a, b)]
    return {"min": round(min(r), 3), "median": round(statistics.median(r), 3), "max": round(max(r), 3)}


def take_turns(fns: dict, reps: int) -> dict:
    """Call every fn once per round, `reps` rounds; wall and CPU seconds per call."""
    out = {k: {"wall": [], "cpu": []} for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            c0, t0 = cpu_seconds(), time.perf_counter()
            fn()
            out[k]["wall"].append(time.perf_counter() - t0)
            out[k]["cpu"].append(cpu_seconds() - c0)
    return out


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:400]


# --------------------------------------------------------------------------------------------
# Recurrent cells
# --------------------------------------------------------------------------------------------


def bench_rnn(kind: str, args) -> dict:
    res = {"cell": kind, "hidden": args.hidden, "batch": args.batch, "length": args.length, "z": args.z,
           "recurrent_dropout_keep": args.keep, "load_before": load(), "errors": {}}
    strokes, z = random_batch(args.batch, args.length, args.z, CPU)
    steps, setup_s = {}, {}

    ref = None

    def build(name, cell_kind, keep, path, fusion):
        nonlocal ref
        torch.manual_seed(0)
        model = Decoder(cell_kind, args.hidden, args.z, keep, args.hyper_units, args.hyper_emb, fusion=fusion).train()
        t0 = time.perf_counter()
        if path == "bptt":  # parity with the per-step reference: same weights, same masks, fp32
            try:
                if ref is None:
                    ref = loss_and_grads(model, "reference", strokes, z, seed=1)
                res[f"parity_{name}_vs_reference"] = compare(ref, loss_and_grads(model, "bptt", strokes, z, seed=1))
            except Exception as e:
                res["errors"][f"parity_{name}"] = error_text(e)
            model.zero_grad(set_to_none=True)
        step = make_step(model, make_optimizer(model, CPU, False), path, False, CPU)
        step(strokes, z)  # warm-up (a compiled variant compiles in the parity check or here)
        setup_s[name] = round(time.perf_counter() - t0, 2)
        steps[name] = lambda: step(strokes, z)
        return model

    build("bptt", kind, args.keep, "bptt", False)
    if args.compile:
        try:
            build("bptt+compile", kind, args.keep, "bptt", Fusion(devices=("cuda", "cpu")))
        except Exception as e:
            res["errors"]["bptt+compile"] = error_text(e)
    build("reference", kind, args.keep, "reference", False)
    build("native", "lstm", 1.0, "cudnn", False)
    res["setup_s"] = setup_s  # parity check (bptt variants) + first step, compiling included
    t = take_turns(steps, args.reps)
    res["ms"] = {k: summary(v["wall"], 1e3, 1) for k, v in t.items()}
    res["cpu_ms"] = {k: summary(v["cpu"], 1e3, 1) for k, v in t.items()}
    res["ratio_wall"] = {f"{k}/native": ratios(t[k]["wall"], t["native"]["wall"]) for k in t if k != "native"}
    res["ratio_wall"].update({f"reference/{k}": ratios(t["reference"]["wall"], t[k]["wall"])
                              for k in t if k.startswith("bptt")})
    res["ratio_cpu"] = {f"{k}/native": ratios(t[k]["cpu"], t["native"]["cpu"]) for k in t if k != "native"}
    res["load_after"] = load()
    return res


# --------------------------------------------------------------------------------------------
# Diffusion sampling
# --------------------------------------------------------------------------------------------


def bench_diffusion(args) -> dict:
    from sketchlab.models.sketchknitter import Config, SketchKnitter

    res = {"batch": args.diffusion_batch, "timed_steps": args.steps, "load_before": load(),
           "network": args.diffusion_model, "errors": {}}
    torch.manual_seed(0)
    if args.diffusion_model == "default":
        model = SketchKnitter(Config(faithful=True))
        with torch.no_grad():  # zero-initialised layers re-drawn so the output depends on the input
            for p in model.unet.parameters():
                if p.dim() > 1 and not p.any():
                    p.normal_(0.0, 0.02)
        model.ema.copy_from(model.unet)
        model.set_data_stats(1.0, lengths=np.arange(8, model.config.num_points + 1))
    else:  # a pretrained entry: the network a CPU user samples (e.g. sketchknitter-spg5)
        from sketchlab.api import load as load_model
        model = load_model(args.diffusion_model, device="cpu").module
    model.eval()
    res["parameters_m"] = round(sum(p.numel() for p in model.unet.parameters()) / 1e6, 2)
    B, K = args.diffusion_batch, args.steps
    variants = {"plain": dict(fast=False), "fast": dict(fast=True)}
    if args.compile_diffusion:
        variants["fast+compile"] = dict(fast=True, compile=True)
    out = {}
    for sampler in ("ddpm", "ddim"):
        fns = {}
        for name, kw in variants.items():
            def run(kw=kw, sampler=sampler):
                return model.generate(B, sampler=sampler, steps=K, batch_size=B, seed=0, **kw)
            try:
                t0 = time.perf_counter()
                run()  # warm-up (builds the runner; compiles a compiled variant)
                res.setdefault("first_call_s", {})[f"{sampler}/{name}"] = round(time.perf_counter() - t0, 2)
                fns[name] = run
            except Exception as e:
                res["errors"][f"{sampler}/{name}"] = error_text(e)
        t = take_turns(fns, args.diffusion_reps)
        full = {"ddpm": 1000, "ddim": 30}[sampler]
        entry = {"extrapolated_to_steps": full}
        for name, v in t.items():
            per_step = statistics.median(v["wall"]) / K
            entry[name] = {"s_per_step": summary([w / K for w in v["wall"]], 1.0, 4),
                           "cpu_s_per_step": summary([c / K for c in v["cpu"]], 1.0, 4),
                           "sketches_per_s": round(B / (per_step * full), 4)}
        for name in t:
            if name != "plain":
                entry[f"speedup_{name}_vs_plain"] = ratios(t["plain"]["wall"], t[name]["wall"])
        out[sampler] = entry
    try:  # agreement of the fast path with the plain loop (deterministic DDIM)
        a = model.generate(B, sampler="ddim", steps=K, batch_size=B, seed=0, fast=False).points
        b = model.generate(B, sampler="ddim", steps=K, batch_size=B, seed=0, fast=True).points
        res["fast_vs_plain_ddim_rel_l2"] = float(np.linalg.norm(b[:, :2] - a[:, :2]) / np.linalg.norm(a[:, :2]))
    except Exception as e:
        res["errors"]["agreement"] = error_text(e)
    res.update(out)
    res["load_after"] = load()
    return res


# --------------------------------------------------------------------------------------------
# Batch building (what the trainer's prefetch thread does between GPU steps)
# --------------------------------------------------------------------------------------------


def bench_batches(args) -> dict:
    from sketchlab.data import strokegrid as G
    from sketchlab.data import strokes as S
    from sketchlab.data.npz import load_npz_split
    from sketchlab.data.patches import PatchGeometry, plan_batch, plan_sketch

    path = Path(args.import_data).parent / "sketchrnn" / "aaron_sheep.npz"
    sk = load_npz_split(path, "train")
    res = {"data": os.fspath(path), "load_before": load()}
    geom = PatchGeometry(256)
    sheep = [sk[i] for i in range(128)]

    def loop_plans():
        rng = np.random.default_rng(0)
        return [plan_sketch(s, geom, 0.1, rng) for s in sheep]

    t = take_turns({"batched": lambda: plan_batch(sheep, geom, 0.1, np.random.default_rng(0)),
                    "per_sketch": loop_plans}, args.batch_reps)
    res["sp_gra2seq_plan_B128"] = {k: {"cpu_ms": summary(v["cpu"], 1e3, 2)} for k, v in t.items()}
    res["sp_gra2seq_plan_B128"]["speedup_cpu"] = ratios(t["per_sketch"]["cpu"], t["batched"]["cpu"])

    # SketchGloc's chunking of a batch of 100 sheep (L = 5, S = 62 as `adapt_config` sizes them
    # on aaron_sheep): chunk_batch against the per-sketch loop make_batch ran before.
    clean = [S.to_absolute(G.faithful_roundtrip(S.normalize(sk[i], 20.0))) for i in range(100)]
    rng = np.random.default_rng(0)
    noisy = [G.reorganise(c, c[:, 2], 0.1, rng) for c in clean]
    L, Sn = 5, 62

    def loop_chunks():
        B = len(clean)
        chunks, chunk_len = np.zeros((B, Sn, L, 2), np.float32), np.zeros((B, Sn), np.int64)
        boxes, boxes_clean = np.zeros((B, Sn, 4), np.float32), np.zeros((B, Sn, 4), np.float32)
        for b in range(B):
            starts, lens = G.chunk_bounds(clean[b][:, 2], L)
            k = min(Sn, len(starts))
            starts, lens = starts[:k], lens[:k]
            for i in range(k):
                m = min(L, int(lens[i]))
                chunks[b, i, :m] = noisy[b][starts[i]:starts[i] + m, :2]
            chunk_len[b, :k] = np.minimum(lens, L)
            boxes[b, :k] = G.chunk_boxes(noisy[b], starts, lens)
            boxes_clean[b, :k] = G.chunk_boxes(clean[b], starts, lens)

    t = take_turns({"batched": lambda: G.chunk_batch(clean, noisy, L, Sn, True), "per_sketch": loop_chunks},
                   args.batch_reps)
    res["sketchgloc_chunks_B100"] = {k: {"cpu_ms": summary(v["cpu"], 1e3, 2)} for k, v in t.items()}
    res["sketchgloc_chunks_B100"]["speedup_cpu"] = ratios(t["per_sketch"]["cpu"], t["batched"]["cpu"])
    res["load_after"] = load()
    return res


# --------------------------------------------------------------------------------------------
# ndjson import
# --------------------------------------------------------------------------------------------


def bench_import(args) -> dict:
    from sketchlab.data.ndjson import default_processes, import_ndjson

    src = Path(args.import_data)
    files = sorted(src.glob("*.ndjson"))[: args.import_files or None]
    res = {"source": os.fspath(src), "files": len(files), "bytes": sum(f.stat().st_size for f in files),
           "processes_all": default_processes(), "load_before": load()}
    if not files:
        res["errors"] = {"all": f"no ndjson files in {src}"}
        return res
    t = {1: {"wall": [], "cpu": []}, res["processes_all"]: {"wall": [], "cpu": []}}
    count = 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.import_reps):
            for p in t:
                out = Path(tmp) / f"p{p}_{r}"
                c0, t0 = cpu_seconds() + cpu_seconds(True), time.perf_counter()
                p0 = cpu_seconds()
                rep = import_ndjson(files, out, progress=False, processes=p)
                t[p]["wall"].append(time.perf_counter() - t0)
                t[p]["cpu"].append(cpu_seconds() + cpu_seconds(True) - c0)
                # The longest chain of CPU work: this process's own (planning, merging, writing)
                # plus the busiest converter. On a machine with a free core per process that is
                # the wall time; on a shared one, the wall time is what the scheduler grants.
                own = cpu_seconds() - p0  # with workers, their CPU time is not in ours
                t[p].setdefault("critical", []).append(own + rep["convert_cpu_seconds"][0] if p > 1 else own)
                count = rep["imported"]
        one, many = Path(tmp) / "p1_0", Path(tmp) / f"p{res['processes_all']}_0"
        names = sorted(f.name for f in one.glob("*.npz"))
        _, mismatch, errors = filecmp.cmpfiles(one, many, names, shallow=False)
        res["npz_identical"] = not mismatch and not errors and len(names) > 0
    res["sketches"] = count
    for p, v in t.items():
        res[f"processes_{p}"] = {"wall_s": summary(v["wall"], 1.0, 2), "cpu_s": summary(v["cpu"], 1.0, 2),
                                 "critical_path_cpu_s": summary(v["critical"], 1.0, 2),
                                 "sketches_per_s": round(count / statistics.median(v["wall"]), 1),
                                 "sketches_per_s_free_cores": round(count / statistics.median(v["critical"]), 1)}
    if res["processes_all"] > 1:
        n = res["processes_all"]
        res["speedup_all_vs_1"] = ratios(t[1]["wall"], t[n]["wall"])
        res["speedup_all_vs_1_free_cores"] = ratios(t[1]["critical"], t[n]["critical"])
    res["load_after"] = load()
    return res


# --------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="rnn,diffusion,batches,import", help="sections to run (comma-separated)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    ap.add_argument("--compile", action="store_true",
                    help="also time the cells with torch.compile'd pointwise functions (a minute or more of compiling)")
    ap.add_argument("--compile-diffusion", action="store_true",
                    help="also time the sampler with a torch.compile'd UNet (several minutes of compiling on 2 cores)")
    ap.add_argument("--cells", default="lstm,layer_norm,hyper")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--length", type=int, default=130)
    ap.add_argument("--z", type=int, default=128)
    ap.add_argument("--keep", type=float, default=0.9)
    ap.add_argument("--hyper-units", type=int, default=256)
    ap.add_argument("--hyper-emb", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5, help="timed training steps per variant")
    ap.add_argument("--diffusion-batch", type=int, default=16)
    ap.add_argument("--diffusion-model", default="default",
                    help="'default': SketchKnitter's default network (20.3M parameters, random "
                         "weights); or a pretrained name such as sketchknitter-spg5 (1.4M)")
    ap.add_argument("--steps", type=int, default=5, help="reverse steps timed per sampling call")
    ap.add_argument("--diffusion-reps", type=int, default=3)
    shared = Path(os.environ.get("SKETCHLAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--import-data", default=os.fspath(shared / "spg20"))
    ap.add_argument("--import-files", type=int, default=0, help="first N files only (0: all)")
    ap.add_argument("--import-reps", type=int, default=2)
    ap.add_argument("--batch-reps", type=int, default=20)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = [s for s in args.only.split(",") if s]
    data = {
        "benchmark": "cpu",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
                    "python": platform.python_version()},
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "load_start": load(),
        "notes": "ms / s are wall times, cpu_* the CPU time of this process; ratio_* are medians of "
                 "ratios of back-to-back runs. native = torch.lstm (oneDNN) without dropout.",
    }
    t_start = time.perf_counter()
    if "rnn" in sections:
        data["rnn"] = []
        for kind in args.cells.split(","):
            log(f"rnn {kind} ...")
            try:
                data["rnn"].append(bench_rnn(kind, args))
            except Exception as e:
                data["rnn"].append({"cell": kind, "errors": {"all": error_text(e)}})
                log(traceback.format_exc())
            report.save(data, "cpu")
    # Each section is measured apart: one that fails records its error and the others still run.
    for name, bench in (("diffusion", bench_diffusion), ("batches", bench_batches),
                        ("import", bench_import)):
        if name not in sections:
            continue
        log(f"{name} ...")
        try:
            data[name] = bench(args)
        except Exception as e:
            data[name] = {"errors": {"all": error_text(e)}}
            log(traceback.format_exc())
        report.save(data, "cpu")
    data["load_end"] = load()
    data["total_s"] = round(time.perf_counter() - t_start, 1)
    report.emit(data, "cpu", indent=1)


if __name__ == "__main__":
    main()
