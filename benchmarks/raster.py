"""Benchmark: batched rasterizer vs a plain per-sketch PIL rasterizer, on real sketches.

Times, on the same sketches in the same run:
* `pil_reference`: the plain way, one sketch at a time: PIL `ImageDraw.line` per stroke on a 4x
  larger canvas, box-downsampled for anti-aliasing (single process);
* `rasterize` (numpy, one core, batched over all segments of a chunk of sketches);
* `rasterize_torch` on the CPU, and on CUDA when present (synchronised, after a warm-up), plus the
  time for one 75,000-sketch QuickDraw category (the originals' seq2png takes 30-60 minutes).
Prints one JSON object (sketches/s and ratios) and writes it to $OUT/raster.json when OUT is set.

    PYTHONPATH=src python benchmarks/raster.py                 # 10,000 sheep at 48x48
    PYTHONPATH=src python benchmarks/raster.py --n 2000 --size 225
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from report import emit  # noqa: E402  (benchmarks/report.py)
from sketchlab.data.raster import rasterize, rasterize_torch  # noqa: E402
from sketchlab.data.npz import load_npz  # noqa: E402
from sketchlab.data.sketches import Sketches  # noqa: E402

# Like tests/conftest.py: SKETCHLAB_SHARED_DATA, else shared/data beside (or inside) the repo.
SHARED_CANDIDATES = [Path(p) for p in (os.environ.get("SKETCHLAB_SHARED_DATA"),) if p] + [
    REPO.parent / "shared" / "data", REPO / "shared" / "data"]
SHEEP = Path("sketchrnn") / "aaron_sheep.npz"


def load_sheep(n: int) -> tuple[list[np.ndarray], int]:
    """n real sketches: sheep train + valid + test (8,000), repeated from the start if needed."""
    path = next((base / SHEEP for base in SHARED_CANDIDATES if (base / SHEEP).is_file()), None)
    if path is None:
        where = ", ".join(str(p) for p in SHARED_CANDIDATES)
        sys.exit(f"benchmarks/raster.py: {SHEEP} not found under {where}; "
                 "set SKETCHLAB_SHARED_DATA to the shared data folder")
    splits = load_npz(path, ("train", "valid", "test"))
    sketches = [s for split in ("train", "valid", "test") for s in splits[split]]
    sketches = [np.asarray(s, dtype=np.float32) for s in sketches]
    unique = len(sketches)
    return [sketches[i % unique] for i in range(n)], unique


def pil_reference(sketch: np.ndarray, size: int = 48, margin: float = 1.5, line_width: float = 1.0,
                  supersample: int = 4) -> np.ndarray:
    """The plain way: same placement as seq2png, PIL lines at 4x, box-filtered down (AA)."""
    pos = np.cumsum(sketch[:, :2].astype(np.float64), axis=0)
    lo = np.minimum(pos.min(0), 0.0)
    hi = np.maximum(pos.max(0), 0.0)
    extent = hi - lo
    norm = extent.max()
    scale = (size - 2 * margin) / max(norm, 1e-5)
    pts = ((pos - lo + (norm - extent) / 2) * scale + margin) * supersample
    img = Image.new("L", (size * supersample, size * supersample), 255)
    draw = ImageDraw.Draw(img)
    width = max(1, round(line_width * supersample))
    first = 0
    for i in range(len(sketch)):
        if sketch[i, 2] > 0.5 or i == len(sketch) - 1:  # a stroke ends here
            if i > first:
                draw.line([tuple(p) for p in pts[first:i + 1]], fill=0, width=width)
            first = i + 1
    return np.asarray(img.resize((size, size), Image.BOX))


def timed(fn, repeats: int, sync=None) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def padded(sketches: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in sketches])
    out = torch.zeros(len(sketches), int(lengths.max()), 3)
    for i, s in enumerate(sketches):
        out[i, :len(s)] = torch.from_numpy(s)
    return out, lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000,
                        help="sketches to rasterize (default 10000)")
    parser.add_argument("--size", type=int, default=48, help="image side in pixels (default 48)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per path (median)")
    parser.add_argument("--torch-cpu-n", type=int, default=2000,
                        help="sketches for the (slow, test-only) torch CPU timing (default 2000)")
    parser.add_argument("--category", type=int, default=75_000,
                        help="sketches in one category for the CUDA category time (default 75000)")
    args = parser.parse_args()

    sketches, unique = load_sheep(args.n)
    batch = Sketches.from_list(sketches)
    strokes, lengths = padded(sketches)
    n, size = args.n, args.size
    result = {
        "benchmark": "raster", "n": n, "unique_sketches": unique, "size": size,
        "data": "aaron_sheep train+valid+test", "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }

    # The plain reference runs once over all n (it is the slow one).
    start = time.perf_counter()
    reference = np.stack([pil_reference(s, size) for s in sketches])
    pil_s = time.perf_counter() - start
    result["pil_reference_sketches_per_s"] = n / pil_s

    images = rasterize(batch, size)
    numpy_s = timed(lambda: rasterize(batch, size), args.repeats)
    result["numpy_sketches_per_s"] = n / numpy_s
    result["numpy_vs_pil"] = pil_s / numpy_s
    result["mean_abs_diff_vs_pil_reference"] = float(
        np.abs(images.astype(np.int16) - reference).mean())

    # The torch path on the CPU is the GPU code, there for testing: time it on a subset, with
    # torch's default threads and with one thread (OpenMP threads suffer on a busy machine).
    m = min(n, args.torch_cpu_n)
    torch_cpu = rasterize_torch(strokes[:m], lengths[:m], size)
    result["torch_cpu_vs_numpy_max_abs_diff"] = float(
        (torch_cpu - torch.from_numpy(images[:m]).float()).abs().max())
    result["torch_cpu_n"] = m
    threads = torch.get_num_threads()
    for name, count in (("torch_cpu", threads), ("torch_cpu_1thread", 1)):
        torch.set_num_threads(count)
        cpu_s = timed(lambda: rasterize_torch(strokes[:m], lengths[:m], size), args.repeats)
        result[f"{name}_sketches_per_s"] = m / cpu_s
        result[f"{name}_vs_pil"] = (pil_s / n) / (cpu_s / m)
    torch.set_num_threads(threads)
    result["torch_cpu_threads"] = threads

    if torch.cuda.is_available():
        device = torch.device("cuda")
        result["cuda_device"] = torch.cuda.get_device_name(device)
        s_dev, l_dev = strokes.to(device), lengths.to(device)
        out = rasterize_torch(s_dev, l_dev, size)
        result["cuda_vs_numpy_max_abs_diff"] = float(
            (out.cpu() - torch.from_numpy(images).float()).abs().max())
        sync = torch.cuda.synchronize
        cuda_s = timed(lambda: rasterize_torch(s_dev, l_dev, size), args.repeats, sync)
        result["cuda_sketches_per_s"] = n / cuda_s
        result["cuda_vs_pil"] = pil_s / cuda_s
        # One QuickDraw category: the n sketches tiled up to `category` sketches.
        reps = -(-args.category // n)
        cat_s = s_dev.repeat(reps, 1, 1)[:args.category]
        cat_l = l_dev.repeat(reps)[:args.category]
        del out
        torch.cuda.reset_peak_memory_stats()
        category_s = timed(lambda: rasterize_torch(cat_s, cat_l, size), args.repeats, sync)
        result["cuda_category_sketches"] = args.category
        result["cuda_category_seconds"] = category_s
        result["cuda_category_sketches_per_s"] = args.category / category_s
        result["cuda_peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9

    emit(result, "raster")


if __name__ == "__main__":
    main()
