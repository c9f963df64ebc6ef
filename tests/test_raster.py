"""The batched rasterizer: hand-checked pixels, seq2png placement, edge cases, numpy/torch parity,
a plain per-pixel reference, and (when cairosvg is installed) the seeds' own CairoSVG images."""

import io

import numpy as np
import pytest
import torch

from sketchlab.data.npz import load_npz
from sketchlab.data.raster import rasterize, rasterize_torch
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError, DataError

LINE = np.array([[0, 0, 0], [10, 0, 1]], np.float32)  # one horizontal segment


def padded(sketches):
    lengths = torch.tensor([len(s) for s in sketches])
    out = torch.zeros(len(sketches), max(1, int(lengths.max())), 3)
    for i, s in enumerate(sketches):
        out[i, :len(s)] = torch.as_tensor(np.asarray(s, np.float32))
    return out, lengths


def random_sketches(rng, n, max_len=40):
    """Random walks with pen lifts, zero-length steps, long jumps and sharp turns."""
    out = []
    for _ in range(n):
        m = int(rng.integers(2, max_len))
        xy = rng.normal(0, 5, (m, 2))
        xy[rng.random(m) < 0.1] = 0.0  # zero-length steps
        xy[rng.random(m) < 0.05] *= 10.0  # long segments
        pen = (rng.random(m) < 0.15).astype(np.float64)
        pen[-1] = 1.0
        out.append(np.column_stack([xy, pen]).astype(np.float32))
    return out


def dense_reference(sketch, size=48, margin=1.5, line_width=1.0):
    """The plain way: every pixel against every drawn segment, in float64, combined by max."""
    s = np.asarray(sketch, np.float64)
    pos = np.cumsum(s[:, :2], 0)
    pts = np.concatenate([pos, [[0.0, 0.0]]])  # the box holds the origin
    lo, hi = pts.min(0), pts.max(0)
    extent = hi - lo
    norm = extent.max()
    scale = (size - 2 * margin) / max(norm, 1e-5)
    pix = (pos - lo + (norm - extent) / 2) * scale + margin
    segments, stroke = [], 0
    for i in range(1, len(s)):
        if s[i - 1, 2] > 0.5:  # pen lifted after point i-1: a move
            stroke += 1
        elif np.hypot(*(pix[i] - pix[i - 1])) > 1e-4:
            segments.append((pix[i - 1], pix[i], stroke))
    cy, cx = np.mgrid[0:size, 0:size] + 0.5
    cover = np.zeros((size, size))
    for k, (a, b, st) in enumerate(segments):
        round_start = k > 0 and segments[k - 1][2] == st
        round_end = k + 1 < len(segments) and segments[k + 1][2] == st
        length = np.hypot(*(b - a))
        u = (b - a) / length
        along = (cx - a[0]) * u[0] + (cy - a[1]) * u[1]
        across = (cy - a[1]) * u[0] - (cx - a[0]) * u[1]
        past = along - np.clip(along, 0 if round_start else -np.inf, length if round_end else np.inf)
        normal = np.clip(line_width / 2 + 0.5 - np.hypot(across, past), 0, min(line_width, 1))
        lo_cap = -np.inf if round_start else -0.5
        hi_cap = np.inf if round_end else length + 0.5
        cap = 1.0 if (round_start or round_end) else min(length, 1.0)
        factor = np.clip(np.minimum(along - lo_cap, hi_cap - along), 0, cap)
        cover = np.maximum(cover, normal * factor)
    return (255 - np.floor(cover * 255 + 0.5)).astype(np.uint8)


# ---- hand-checked pixels ------------------------------------------------------------------


def test_horizontal_line_on_pixel_centres():
    # size 49: scale 46/10, the line is centred vertically at y = 5 * 4.6 + 1.5 = 24.5 and runs
    # from x = 1.5 to 47.5: row 24 is fully inked, the end pixels are half covered (butt caps).
    img = rasterize([LINE], size=49)[0]
    expected = np.full((49, 49), 255, np.uint8)
    expected[24, 2:47] = 0
    expected[24, [1, 47]] = 127  # coverage 1/2 -> 255 - round(127.5) = 127, as Cairo
    np.testing.assert_array_equal(img, expected)


def test_horizontal_line_between_rows_is_two_grey_rows():
    # size 48: the line lies on y = 24.0 from x = 1.5 to 46.5: rows 23 and 24 are half covered
    # (grey 127, the spec's "2-px grey line"), the end pixels a quarter (grey 191).
    img = rasterize([LINE])[0]
    expected = np.full((48, 48), 255, np.uint8)
    expected[23:25, 2:46] = 127
    expected[23:25, [1, 46]] = 191  # 255 - round(63.75)
    np.testing.assert_array_equal(img, expected)


def test_vertical_line_is_the_transpose():
    vertical = LINE[:, [1, 0, 2]]
    np.testing.assert_array_equal(rasterize([vertical], size=49)[0], rasterize([LINE], size=49)[0].T)


def test_bbox_holds_origin_and_first_offset_is_a_move():
    # The first offset (5, 5) moves the pen; the line is (5, 5) -> (15, 5). The box starts at the
    # origin: x in [0, 15], y in [0, 5], so norm = 15, scale = 3, and y is centred with a border
    # of (15 - 5) / 2 = 5: the line lies on y = (5 + 5) * 3 + 1.5 = 31.5 from x = 16.5 to 46.5.
    img = rasterize([np.array([[5, 5, 0], [10, 0, 1]], np.float32)])[0]
    expected = np.full((48, 48), 255, np.uint8)
    expected[31, 17:46] = 0
    expected[31, [16, 46]] = 127
    np.testing.assert_array_equal(img, expected)


def test_pen_up_gap_is_not_drawn():
    # x = 0 -> 10 drawn, 10 -> 20 a move (pen lifted after the second point), 20 -> 30 drawn.
    # Pixels: x = 1.5 + 1.5 x, so the strokes cover columns 1..16 and 31..46, the gap 17..30.
    sketch = np.array([[0, 0, 0], [10, 0, 1], [10, 0, 0], [10, 0, 1]], np.float32)
    img = rasterize([sketch])[0]
    assert (img[:, 17:31] == 255).all()
    assert (img[23:25, 2:16] == 127).all() and (img[23:25, 32:46] == 127).all()


def test_thick_lines_scale_with_line_width():
    img3 = rasterize([LINE], size=49, line_width=3.0)[0]
    assert (img3[23:26, 3:46] == 0).all() and (img3[[22, 26], :] == 255).all()
    img2 = rasterize([LINE], size=49, line_width=2.0)[0]
    assert (img2[24, 3:46] == 0).all() and (img2[[23, 25], 3:46] == 127).all()
    thin = rasterize([LINE], size=49, line_width=0.5)[0]
    assert (thin[24, 3:46] == 127).all()  # a half-pixel line covers half of each pixel


def test_corner_join_has_no_gap():
    # An L-shaped stroke: the corner pixel is fully inked (the join), the outer corner is not.
    sketch = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 1]], np.float32)
    img = rasterize([sketch], size=49)[0]
    # scale 4.6, no border: the corner lies at (47.5, 1.5), pixel (row 1, column 47).
    assert img[1, 47] == 0 and img[1, 30] == 0 and img[30, 47] == 0


# ---- edge cases ---------------------------------------------------------------------------


def test_nothing_to_draw_gives_blank_images():
    cases = [
        np.zeros((0, 3), np.float32),                                  # empty
        np.array([[3, 4, 1]], np.float32),                              # a single point
        np.array([[1, 2, 1], [3, 4, 1], [5, 6, 1]], np.float32),        # all pen-up
        np.array([[1, 2, 0], [0, 0, 0], [0, 0, 1]], np.float32),        # zero-length dot
    ]
    imgs = rasterize(cases)
    assert imgs.shape == (4, 48, 48) and imgs.dtype == np.uint8
    assert (imgs == 255).all()
    out = rasterize_torch(*padded(cases))
    assert (out == 255).all()
    assert rasterize([]).shape == (0, 48, 48)


def test_zero_length_segment_inside_a_stroke_changes_nothing():
    base = np.array([[0, 0, 0], [10, 3, 0], [2, 9, 0], [-7, 1, 1]], np.float32)
    with_dot = np.insert(base, 2, [0, 0, 0], axis=0)
    np.testing.assert_array_equal(rasterize([base]), rasterize([with_dot]))


def test_huge_and_tiny_coordinates_give_the_same_picture(rng):
    sketch = random_sketches(rng, 1)[0]
    ref = rasterize([sketch]).astype(int)
    for factor in (1e-6, 1e6, 1e30):
        scaled = sketch.copy()
        scaled[:, :2] *= factor
        assert np.abs(rasterize([scaled]).astype(int) - ref).max() <= 1


def test_bad_input_raises_clear_errors():
    nan = LINE.copy()
    nan[1, 0] = np.nan
    with pytest.raises(DataError, match="sketch 1 row 1"):
        rasterize([LINE, nan])
    with pytest.raises(DataError, match="NaN or inf"):
        rasterize_torch(*padded([LINE, nan]))
    with pytest.raises(DataError, match="shape"):
        rasterize([np.zeros((4, 2))])
    with pytest.raises(DataError, match="lengths"):
        rasterize_torch(torch.zeros(2, 5, 3), torch.tensor([3, 6]))
    with pytest.raises(DataError, match="shape"):
        rasterize_torch(torch.zeros(2, 5), torch.tensor([3, 4]))
    for kw in ({"size": 0}, {"size": 4.5}, {"margin": 30}, {"margin": -1}, {"line_width": 0}):
        with pytest.raises(ConfigError):
            rasterize([LINE], **kw)


def test_rows_past_length_are_ignored():
    strokes, lengths = padded([LINE])
    junk = torch.cat([strokes, torch.tensor([[[float("nan"), 5.0, 0.0], [9.0, 9.0, 0.0]]])], 1)
    np.testing.assert_array_equal(rasterize_torch(junk, lengths).numpy(), rasterize([LINE]))


# ---- fast paths against each other and against the plain reference --------------------------


@pytest.mark.parametrize("size,line_width", [(48, 1.0), (64, 0.7), (40, 3.0), (225, 1.0)])
def test_matches_plain_per_pixel_reference(rng, size, line_width):
    sketches = random_sketches(rng, 6 if size < 100 else 2)
    fast = rasterize(sketches, size=size, line_width=line_width).astype(int)
    plain = np.stack([dense_reference(s, size, 1.5, line_width) for s in sketches]).astype(int)
    diff = np.abs(fast - plain)
    assert diff.max() <= 1  # float32 vs float64 rounding only
    assert (diff > 0).mean() < 2e-3


@pytest.mark.parametrize("size,line_width", [(48, 1.0), (225, 1.0), (32, 2.5)])
def test_torch_matches_numpy(rng, size, line_width):
    sketches = random_sketches(rng, 40)
    ref = rasterize(sketches, size=size, line_width=line_width)
    out = rasterize_torch(*padded(sketches), size=size, line_width=line_width)
    assert out.dtype == torch.float32 and out.shape == (40, size, size)
    diff = (out - torch.from_numpy(ref).float()).abs()
    # Identical arithmetic, except torch's CPU sqrt may differ from IEEE by one ulp.
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    assert torch.equal(out, out.round())


def test_sketches_and_lists_agree_and_batching_changes_nothing(rng):
    empty = np.zeros((0, 3), np.float32)
    sketches = [empty] + random_sketches(rng, 3) + [empty, empty] + random_sketches(rng, 2) + [empty]
    together = rasterize(sketches)
    np.testing.assert_array_equal(rasterize(Sketches.from_list(sketches)), together)
    for i, sketch in enumerate(sketches):
        np.testing.assert_array_equal(rasterize([sketch])[0], together[i])
    torch_out = rasterize_torch(*padded(sketches)).numpy()
    assert np.abs(torch_out - together).max() <= 1


def test_chunks_and_blocks_change_nothing(rng, monkeypatch):
    import sketchlab.data.raster as raster

    sketches = random_sketches(rng, 30)
    ref = rasterize(sketches)
    ref_torch = rasterize_torch(*padded(sketches))
    monkeypatch.setattr(raster, "_CPU_SKETCHES", 7)  # several chunks
    monkeypatch.setattr(raster, "_CPU_PIECES", 5)  # several blocks per window shape
    monkeypatch.setitem(raster._TORCH_SKETCHES, "cpu", 4)
    monkeypatch.setitem(raster._TORCH_PIECES, "cpu", 9)
    np.testing.assert_array_equal(rasterize(sketches), ref)
    assert torch.equal(rasterize_torch(*padded(sketches)), ref_torch)


@pytest.mark.gpu
def test_cuda_matches_cpu(rng):
    sketches = random_sketches(rng, 300)
    strokes, lengths = padded(sketches)
    cpu = rasterize_torch(strokes, lengths)
    gpu = rasterize_torch(strokes.cuda(), lengths.cuda())
    assert gpu.is_cuda
    diff = (gpu.cpu() - cpu).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3


# ---- real sketches ------------------------------------------------------------------------


def sheep(shared_data, n):
    return list(load_npz(shared_data / "sketchrnn" / "aaron_sheep.npz", ("train",))["train"])[:n]


def seq2png_svg(data, width=48, margin=1.5):
    """The seeds' `draw_strokes` SVG text (spec 2.2), written out plainly."""
    abs_x = abs_y = min_x = max_x = min_y = max_y = 0.0
    for dx, dy, _ in data:
        abs_x += float(dx)
        abs_y += float(dy)
        min_x, max_x = min(min_x, abs_x), max(max_x, abs_x)
        min_y, max_y = min(min_y, abs_y), max(max_y, abs_y)
    if max_x - min_x > max_y - min_y:
        norm, border_x, border_y = max_x - min_x, 0.0, (max_x - min_x - (max_y - min_y)) * 0.5
    else:
        norm, border_x, border_y = max_y - min_y, (max_y - min_y - (max_x - min_x)) * 0.5, 0.0
    scale = (width - 2 * margin) / max(norm, 10e-6)
    path = "M%s,%s " % ((border_x - min_x) * scale + margin, (border_y - min_y) * scale + margin)
    lift_pen, command = 1, "m"
    for dx, dy, pen in data:
        command = "m" if lift_pen == 1 else ("l" if command != "l" else "")
        path += command + str(float(dx) * scale) + "," + str(float(dy) * scale) + " "
        lift_pen = pen
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{width}">'
            f'<rect x="0" y="0" width="{width}" height="{width}" fill="white"/>'
            f'<path d="{path}" stroke="black" stroke-width="1" fill="none"/></svg>')


@pytest.mark.realdata
def test_real_sketches_match_plain_reference(shared_data):
    sketches = sheep(shared_data, 30)
    fast = rasterize(sketches).astype(int)
    plain = np.stack([dense_reference(s) for s in sketches]).astype(int)
    assert np.abs(fast - plain).max() <= 1
    torch_out = rasterize_torch(*padded(sketches)).numpy()
    assert np.abs(torch_out - fast).max() <= 1


def cairo_png(sketch, width=48):
    cairosvg = pytest.importorskip("cairosvg")
    from PIL import Image

    png = cairosvg.svg2png(bytestring=seq2png_svg(sketch, width).encode())
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"))


def test_hand_checked_cases_equal_cairosvg():
    """Axis-aligned lines and a corner: our pixels are exactly Cairo's (dev check)."""
    cases = [(LINE, 49), (LINE, 48), (np.array([[5, 5, 0], [10, 0, 1]], np.float32), 48),
             (np.array([[0, 0, 0], [10, 0, 0], [0, 10, 1]], np.float32), 49)]
    for sketch, size in cases:
        np.testing.assert_array_equal(rasterize([sketch], size=size)[0], cairo_png(sketch, size))


@pytest.mark.realdata
def test_close_to_cairosvg(shared_data):
    """The seeds' exact SVG through CairoSVG vs ours (dev check; cairosvg is not a dependency)."""
    sketches = sheep(shared_data, 60)
    cairo = np.stack([cairo_png(s) for s in sketches]).astype(int)
    ours = rasterize(sketches).astype(int)
    diff = np.abs(ours - cairo)
    # Measured on 200 sheep: mean 1.9 grey levels; ink total within 4 %. Differences are where
    # two passes of the pen half-cover one pixel (Cairo's union is darker than our maximum)
    # and at miter corners.
    assert diff.mean() < 2.5
    assert abs((255 - ours).sum() / (255 - cairo).sum() - 1) < 0.06
    assert np.median(diff[(cairo < 255) | (ours < 255)]) <= 8
