"""The Zang-lab seeds' image augmentations, in torch so they run on rasterised batches on the GPU.

RPCL-pix2seq / RPCL-pix2seqH augment each training image (float, [-1, 1], white = +1) with
`random_scale_png` (`utils.py` `DataLoader.random_scale_png` -> `rescale`):

    r ~ U(png_scale_ratio, 1);  h2 = int(h * r)
    img2 = cv2.resize(img, (h2, h2), interpolation=cv2.INTER_AREA)
    out = full(1.0); out[d:d+h2, d:d+h2] = img2      with d = int((h - h2) / 2)

With the default ratio 0.98 and h = 48, `int(48 r)` is 47 for every r < 1 and d = 0: every
training image becomes a 47-px copy anchored top-left with a white last row and column, while
validation/test images stay 48-px. We reproduce that exactly (it is the seeds' hparam, so it is
the default); `png_scale_ratio = 1` turns it off. The rotate/translate augmentations default to
angle 0 / distance 0, where they are the identity, and are not implemented.

INTER_AREA downscaling is a separable linear map: output pixel k averages the input interval
[k s, (k+1) s), s = n_in / n_out, weighting each input pixel by the length it overlaps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def area_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) weights of OpenCV's INTER_AREA downscale along one axis.

    Follows `computeResizeAreaTab` in OpenCV's resize.cpp: positions in float64, slivers under
    1e-3 px dropped, weights stored as float32 (so rows sum to 1 within float32 rounding).
    """
    if not 0 < n_out <= n_in:
        raise ValueError(f"area resize only shrinks: {n_in} -> {n_out}")
    scale = 1.0 / (n_out / n_in)  # OpenCV inverts the inverse scale
    w = np.zeros((n_out, n_in), dtype=np.float32)
    for dx in range(n_out):
        fsx1 = dx * scale
        fsx2 = fsx1 + scale
        cell = min(scale, n_in - fsx1)
        sx2 = min(math.floor(fsx2), n_in - 1)
        sx1 = min(math.ceil(fsx1), sx2)
        if sx1 - fsx1 > 1e-3:
            w[dx, sx1 - 1] = (sx1 - fsx1) / cell
        for sx in range(sx1, sx2):
            w[dx, sx] = 1.0 / cell
        if fsx2 - sx2 > 1e-3:
            w[dx, sx2] = min(min(fsx2 - sx2, 1.0), cell) / cell
    return w


def area_resize(img: Tensor, height: int, width: int) -> Tensor:
    """INTER_AREA shrink of the last two axes of `img` to (height, width)."""
    h, w = img.shape[-2:]
    rows = torch.from_numpy(area_resize_matrix(h, height)).to(img.device, img.dtype)
    cols = torch.from_numpy(area_resize_matrix(w, width)).to(img.device, img.dtype)
    return rows @ img @ cols.T


def shrink_top_left(img: Tensor, sizes, fill: float = 1.0) -> Tensor:
    """The seeds' `rescale`: each image (B, H, W) shrunk to sizes[b] (square) and pasted at
    offset int((H - size)/2) on a `fill` canvas (white: +1 in [-1, 1] units, 255 in grey levels)."""
    b, h, w = img.shape
    sizes = np.broadcast_to(np.asarray(sizes, dtype=np.int64), (b,))
    out = torch.full_like(img, fill)
    for size in np.unique(sizes):
        idx = torch.from_numpy(np.nonzero(sizes == size)[0]).to(img.device)
        dh, dw = int((h - size) / 2), int((w - size) / 2)
        out[idx, dh : dh + size, dw : dw + size] = area_resize(img[idx], int(size), int(size))
    return out


def random_scale_png(img: Tensor, rng: np.random.Generator, min_ratio: float = 0.98, fill: float = 1.0) -> Tensor:
    """`random_scale_png` of the seeds: r ~ U(min_ratio, 1) per image, size int(H r) (47 for
    H = 48 and the default 0.98), pasted top-left-ish. Identity when min_ratio >= 1."""
    if min_ratio >= 1.0:
        return img
    ratios = rng.uniform(min_ratio, 1.0, size=img.shape[0])
    sizes = np.maximum((img.shape[-1] * ratios).astype(np.int64), 1)
    return shrink_top_left(img, sizes, fill)


def png_scale_sizes(rng: np.random.Generator, n: int, size: int, min_ratio: float = 0.98) -> np.ndarray:
    """The shrunk side `int(size * r)`, r ~ U(min_ratio, 1), of n images (`random_scale_png`'s
    draw, made on the CPU side so the shrink itself can run on the device without a sync)."""
    if min_ratio >= 1.0:
        return np.full(n, size, dtype=np.int64)
    ratios = rng.uniform(min_ratio, 1.0, size=n)
    return np.maximum((size * ratios).astype(np.int64), 1)


_PLACEMENT_CACHE: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}


def placement_table(n: int, device) -> tuple[Tensor, Tensor]:
    """For every side s in 0..n: P_s (n, n), the INTER_AREA shrink n -> s placed at offset
    int((n - s)/2) (zero rows elsewhere), and m_s (n,), 1 on the rows it covers. Cached per device."""
    key = (n, str(device))
    if key not in _PLACEMENT_CACHE:
        table = np.zeros((n + 1, n, n), np.float32)
        mask = np.zeros((n + 1, n), np.float32)
        for s in range(1, n + 1):
            d = int((n - s) / 2)
            table[s, d:d + s] = area_resize_matrix(n, s)
            mask[s, d:d + s] = 1.0
        _PLACEMENT_CACHE[key] = (torch.from_numpy(table).to(device), torch.from_numpy(mask).to(device))
    return _PLACEMENT_CACHE[key]


def shrink_top_left_batched(img: Tensor, sizes: Tensor, fill: float = 1.0) -> Tensor:
    """`shrink_top_left` for square images (B, n, n) with per-image sides `sizes` (B,) given as a
    tensor on the images' device: two batched matmuls, no host synchronisation (CUDA-graph safe).

        out_b = P_b img_b P_b^T + fill * (1 - m_b m_b^T)
    """
    b, h, w = img.shape
    if h != w:
        raise ValueError(f"shrink_top_left_batched needs square images, got {h}x{w}")
    table, mask = placement_table(h, img.device)
    p = table[sizes.long()].to(img.dtype)  # (B, n, n)
    m = mask[sizes.long()].to(img.dtype)  # (B, n)
    inside = m.unsqueeze(-1) * m.unsqueeze(-2)
    return p @ img @ p.transpose(1, 2) + fill * (1.0 - inside)
