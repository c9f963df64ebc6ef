"""Pictures of a trained model's latent space: maps, interpolations and analogies.

Every tool works for any model with `make_batch` + `encode` + `decode_codes` (sketch-rnn,
RPCL-pix2seq, RPCL-pix2seqH); models with a mixture prior add their labels (`latent_labels`)
and component centres (`latent_centres`) to the map.

* map: t-SNE (scikit-learn; perplexity 30 as RPCL-pix2seqH's `visualization.py`) of the codes
  of real sketches together with the prior's means, drawn as one PNG with a panel per colouring
  (category, then each latent label: component, or level_k and level_l) and a panel of sketch
  thumbnails pasted at their positions.
* interpolate: decode codes on the (spherical by default) path between two sketches' codes.
* analogy: the "latent calculator" of RPCL-pix2seqH, decode z_c + (z_b - z_a).
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError, DataError
from sketchlab.latent.codes import label_agreement
from sketchlab.latent.interpolate import analogy, interpolate
from sketchlab.nn.rpcl import ALIVE_THRESHOLD
from sketchlab.render import save_grid
from sketchlab.render.layout import PALETTE
from sketchlab.render.png import render_sketch, save_png, text_font

PANEL = 520            # scatter panel side, pixels
LEGEND = 150           # legend column width
BAND = 30              # title band height
THUMB_PANEL = 1000     # thumbnail panel side
THUMB = 46             # thumbnail side
DEAD_WEIGHT = ALIVE_THRESHOLD  # centres with less prior weight are drawn hollow


def label_colour(i: int) -> str:
    """The render palette for the first 10 labels, then golden-angle hues."""
    if i < len(PALETTE):
        return PALETTE[i]
    h = (i * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.8)
    return "#%02x%02x%02x" % (int(r * 255), int(g * 255), int(b * 255))


# --------------------------------------------------------------------------------------------
# map
# --------------------------------------------------------------------------------------------


def tsne(points: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of (N, D) points with scikit-learn (perplexity capped below N / 3)."""
    try:
        from sklearn.manifold import TSNE
    except ImportError as e:
        raise ConfigError("`sketchlab latent map` needs scikit-learn: pip install scikit-learn "
                          "(or pip install 'sketchlab[latent]')") from e
    n = len(points)
    if n < 4:
        raise DataError(f"a t-SNE map needs at least 4 codes, got {n}")
    perp = float(min(perplexity, max(1.0, (n - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed,
                learning_rate=150.0).fit_transform(points.astype(np.float64))


def pca2(points: np.ndarray) -> np.ndarray:
    """The first two principal components (a fallback where scikit-learn is not installed)."""
    x = points.astype(np.float64) - points.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def _to_canvas(xy: np.ndarray, side: int, pad: int) -> np.ndarray:
    lo, hi = xy.min(0), xy.max(0)
    span = np.maximum(hi - lo, 1e-9).max()
    centre = (lo + hi) / 2
    return (xy - centre) / span * (side - 2 * pad) + side / 2


def _scatter_panel(pos: np.ndarray, labels: np.ndarray, names: list[str], title: str,
                   centres: np.ndarray | None, weights: np.ndarray | None) -> Image.Image:
    img = Image.new("RGB", (PANEL + LEGEND, PANEL + BAND), "white")
    draw = ImageDraw.Draw(img)
    draw.text((8, 6), title, fill="#333333", font=text_font(16))
    order = np.random.default_rng(0).permutation(len(pos))  # no label painted last everywhere
    for i in order:
        x, y = pos[i]
        c = label_colour(int(labels[i]))
        draw.ellipse((x - 3, y - 3 + BAND, x + 3, y + 3 + BAND), fill=c)
    if centres is not None:
        small = text_font(11)
        for k, (x, y) in enumerate(centres):
            alive = weights is None or weights[k] > DEAD_WEIGHT
            box = (x - 6, y - 6 + BAND, x + 6, y + 6 + BAND)
            draw.rectangle(box, outline="black", width=2, fill=("white" if not alive else None))
            draw.text((x + 8, y - 6 + BAND), str(k), fill="black" if alive else "#999999", font=small)
    legend = text_font(12)
    used = np.unique(labels)
    for row, lab in enumerate(used[:40]):
        y = BAND + 8 + row * 16
        draw.rectangle((PANEL + 6, y, PANEL + 18, y + 12), fill=label_colour(int(lab)))
        name = names[int(lab)] if int(lab) < len(names) else str(int(lab))
        draw.text((PANEL + 24, y - 1), f"{name} ({int((labels == lab).sum())})", fill="#333333", font=legend)
    if centres is not None:
        draw.text((PANEL + 6, PANEL + BAND - 18), "squares: prior means", fill="#333333", font=legend)
    return img


def _thumbnail_panel(sketches: Sketches, pos: np.ndarray, labels: np.ndarray, count: int,
                     seed: int) -> Image.Image:

    img = Image.new("RGB", (THUMB_PANEL, THUMB_PANEL + BAND), "white")
    ImageDraw.Draw(img).text((8, 6), "sketches at their codes", fill="#333333", font=text_font(16))
    pick = np.random.default_rng(seed).permutation(len(sketches))[:count]
    for i in pick:
        x, y = pos[i]
        if len(sketches[int(i)]) == 0:
            continue
        cell = render_sketch(sketches[int(i)], size=THUMB, colour=label_colour(int(labels[i])),
                             line_width=1.2, margin=3)
        mask = ImageOps.invert(cell.convert("L"))  # ink opaque, paper transparent
        img.paste(cell, (int(x - THUMB / 2), int(y - THUMB / 2 + BAND)), mask)
    return img


def latent_map(model, sketches: Sketches, out, *, perplexity: float = 30.0, thumbnails: int = 150,
               seed: int = 0, batch_size: int = 500, method: str = "tsne") -> dict:
    """Draw the t-SNE (or `method="pca"`) map of `sketches`' codes (normalised) into the PNG `out`.

    Panels: by category (when the sketches carry one), by each of `model.latent_labels`, and
    thumbnails. Returns a summary: number of codes, the labels drawn and how many distinct
    values each takes."""
    if len(sketches) == 0:
        raise DataError("latent map: no sketches to encode")
    try:
        codes = model.encode_sketches(sketches, batch_size)
    except NotImplementedError as e:
        raise ConfigError(f"latent map: {e}") from e
    labels: dict[str, np.ndarray] = {}
    names: dict[str, list[str]] = {}
    if sketches.category is not None:
        labels["category"] = sketches.category
        names["category"] = list(sketches.category_names)
    for key, value in model.latent_labels(codes).items():
        labels[key] = np.asarray(value)
        names[key] = [f"{key} {i}" for i in range(int(labels[key].max()) + 1)]
    centres = weights = None
    if model.has_components:
        c, w = model.latent_centres()
        centres, weights = c.detach().float().cpu().numpy(), w.detach().float().cpu().numpy()
    points = codes.cpu().numpy()
    if centres is not None:
        points = np.concatenate([points, centres], 0)
    if method not in ("tsne", "pca"):
        raise ConfigError(f"--method {method}: choose tsne or pca")
    xy = _to_canvas(tsne(points, perplexity, seed) if method == "tsne" else pca2(points), PANEL, 14)
    pos, cpos = xy[:len(codes)], (xy[len(codes):] if centres is not None else None)
    if not labels:  # a model without labels on unlabelled sketches: one colour
        labels["codes"] = np.zeros(len(codes), np.int64)
        names["codes"] = ["code"]
    panels = [_scatter_panel(pos, lab, names[key], f"{method}: coloured by {key}", cpos, weights)
              for key, lab in labels.items()]
    thumb_pos = _to_canvas(xy[:len(codes)], THUMB_PANEL, 30)
    first = next(iter(labels.values()))
    thumbs = _thumbnail_panel(sketches, thumb_pos, first, thumbnails, seed)
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    pw, ph = panels[0].size
    width = max(cols * pw, thumbs.size[0])
    canvas = Image.new("RGB", (width, rows * ph + thumbs.size[1]), "white")
    for k, p in enumerate(panels):
        r, c = divmod(k, cols)
        canvas.paste(p, (c * pw, r * ph))
    canvas.paste(thumbs, ((width - thumbs.size[0]) // 2, rows * ph))
    save_png(canvas, out)
    summary = {"n": int(len(codes)),
               "labels": {k: int(len(np.unique(v))) for k, v in labels.items()},
               "centres": 0 if centres is None else int(len(centres)), "method": method}
    if model.has_components:
        summary["n_alive"] = int(model.n_alive())
    if "category" in labels:
        # How well each latent label (an RPCL component) tells the categories apart.
        summary["agreement"] = {
            k: {m: label_agreement(labels["category"], v)[m] for m in ("nmi", "purity")}
            for k, v in labels.items() if k not in ("category", "codes")}
    return summary


# --------------------------------------------------------------------------------------------
# interpolate / analogy
# --------------------------------------------------------------------------------------------


def _check_index(i: int, n: int, flag: str) -> int:
    if not -n <= int(i) < n:
        raise ConfigError(f"{flag} {i}: the reference set holds {n} sketches (0..{n - 1})")
    return int(i) % n


def _caption(sketches: Sketches, i: int, tag: str) -> str:
    name = sketches.category_name(i)
    return f"{tag}: {name} #{i}" if name else f"{tag}: #{i}"


def _decode(model, codes: torch.Tensor, temperature, seed: int, greedy: bool) -> Sketches:
    try:
        return model.decode_codes(codes, temperature=temperature, seed=seed, greedy=greedy)
    except NotImplementedError as e:
        raise ConfigError(f"{e}") from e


def _save_strip(items: list[np.ndarray], captions: list[str], out) -> None:
    save_grid(items, out, cols=len(items), titles=captions, titles_below=True)


def interpolation_strip(model, sketches: Sketches, a: int, b: int, out, *, steps: int = 8,
                        spherical: bool = True, temperature: float | None = None, seed: int = 0,
                        greedy: bool = False) -> Sketches:
    """Decode `steps` codes from sketch a's code to sketch b's; draw [a, decoded..., b] to `out`
    (.png or .svg). Returns the decoded sketches (normalised, carrying z)."""
    if steps < 2:
        raise ConfigError(f"--steps {steps}: need at least 2 (the two ends)")
    a, b = _check_index(a, len(sketches), "--a"), _check_index(b, len(sketches), "--b")
    codes = model.encode_sketches(sketches[[a, b]])
    path = interpolate(codes[0].cpu(), codes[1].cpu(), steps, spherical=spherical)
    decoded = _decode(model, path, temperature, seed, greedy)
    ts = np.linspace(0, 1, steps)
    _save_strip([sketches[a], *decoded, sketches[b]],
                [_caption(sketches, a, "a"), *[f"t={t:.2f}" for t in ts], _caption(sketches, b, "b")],
                out)
    return decoded


def analogy_strip(model, sketches: Sketches, a: int, b: int, c: int, out, *, samples: int = 3,
                  temperature: float | None = None, seed: int = 0, greedy: bool = False) -> Sketches:
    """Decode z_c + (z_b - z_a) `samples` times; draw [a, b, c, results...] to `out`."""
    if samples < 1:
        raise ConfigError(f"--samples {samples}: need at least 1")
    idx = [_check_index(i, len(sketches), f) for i, f in ((a, "--a"), (b, "--b"), (c, "--c"))]
    za, zb, zc = model.encode_sketches(sketches[idx]).cpu()
    target = analogy(za, zb, zc)
    decoded = _decode(model, target.unsqueeze(0).repeat(samples, 1), temperature, seed, greedy)
    _save_strip([sketches[i] for i in idx] + list(decoded),
                [_caption(sketches, idx[0], "a"), _caption(sketches, idx[1], "b"),
                 _caption(sketches, idx[2], "c")] + ["c + b - a"] * samples, out)
    return decoded



__all__ = ["analogy_strip", "interpolation_strip", "latent_map", "pca2", "tsne"]
