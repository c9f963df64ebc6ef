import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image, ImageColor

from sketchlab import cli
from sketchlab.data import synthetic
from sketchlab.data.sketches import Sketches
from sketchlab.errors import ConfigError, DataError
from sketchlab.render import layout, png, save_grid, svg
from sketchlab.data.sources import load_sketch_file

SVG_NS = "{http://www.w3.org/2000/svg}"

# A square from (10, 10) to (30, 30) drawn in one stroke (the first row is the pen-up move from
# the origin), then, after a pen-up move, a horizontal bar from (40, 20) to (60, 20) and a dot.
TWO_STROKES = np.array([
    [10, 10, 0], [20, 0, 0], [0, 20, 0], [-20, 0, 0], [0, -20, 1],
    [30, 10, 0], [20, 0, 1],
    [-10, 5, 1],
], np.float32)


def test_fit_polylines_hand_case():
    # bbox of the drawn points is x 10..60, y 10..30 (the origin is not drawn, so not fitted);
    # box 100 x 100 with margin 10 -> scale 80 / 50 = 1.6, centred on (35, 20) -> (50, 50)
    lines = layout.fit_polylines(TWO_STROKES, 0, 0, 100, 100, 10)
    assert [len(l) for l in lines] == [5, 2, 1]
    assert np.allclose(lines[0][0], [(10 - 35) * 1.6 + 50, (10 - 20) * 1.6 + 50])
    assert np.allclose(lines[1], [[(40 - 35) * 1.6 + 50, 50], [90, 50]])
    assert np.allclose(lines[2], [[(50 - 35) * 1.6 + 50, (25 - 20) * 1.6 + 50]])
    xs = np.concatenate([l[:, 0] for l in lines])
    assert xs.min() == pytest.approx(10) and xs.max() == pytest.approx(90)
    # a sketch of one repeated point becomes a dot in the middle
    dot = np.array([[5, 5, 1]], np.float32)
    assert np.allclose(layout.fit_polylines(dot, 0, 0, 64, 64, 4)[0], [[32, 32]])


def test_grid_shape():
    assert layout.grid_shape(10, None) == (3, 4)
    assert layout.grid_shape(10, 5) == (2, 5)
    assert layout.grid_shape(3, 8) == (1, 3)
    assert layout.grid_shape(0, None) == (0, 0)


def test_svg_one_sketch_is_valid_and_skips_pen_up_moves():
    text = svg.svg_sketch(TWO_STROKES, size=100, margin=10, colour_strokes=True)
    root = ET.fromstring(text.split("?>", 1)[1])
    assert root.tag == SVG_NS + "svg" and root.get("width") == "100"
    paths = root.findall(f".//{SVG_NS}path")
    dots = root.findall(f".//{SVG_NS}circle")
    assert len(paths) == 2 and len(dots) == 1  # one element per stroke, no pen-up lines
    # each path starts with a move, then only line-tos: the pen-up jumps are never drawn
    first = paths[0].get("d")
    assert first.startswith("M10 34 L") and first.count("M") == 1 and first.count("L") == 4
    assert paths[1].get("d") == "M58 50 L90 50"
    assert [p.get("stroke") for p in paths] == list(layout.PALETTE[:2])
    assert dots[0].get("fill") == layout.PALETTE[2]


def test_svg_grid_titles_and_single_colour():
    sketches = synthetic.make_doodles(2, categories=["house", "star"])
    titles = ['<house> & "co"', "star", "c", "d"]
    text = svg.svg_grid(sketches, cols=3, cell=64, titles=titles, colour="#123456")
    root = ET.fromstring(text.split("?>", 1)[1])
    texts = [t.text for t in root.iter(SVG_NS + "text")]
    assert texts == titles  # escaped in the file, intact once parsed
    band = 10 + 6  # font 10 px at this cell size, plus padding
    assert root.get("width") == str(3 * 64 + 4) and root.get("height") == str(2 * (64 + band) + 3)
    strokes = {p.get("stroke") for p in root.iter(SVG_NS + "path")}
    assert strokes == {"#123456"}
    with pytest.raises(ConfigError, match="3 titles for 4 sketches"):
        svg.svg_grid(sketches, titles=titles[:3])


def _ink(img: Image.Image) -> np.ndarray:
    return 255 - np.asarray(img.convert("L"), dtype=np.int32)


def test_png_sketch_is_antialiased_and_skips_pen_up_moves():
    img = png.render_sketch(TWO_STROKES, size=100, margin=10, line_width=2.0)
    assert img.size == (100, 100) and img.mode == "RGB"
    ink = _ink(img)
    # the bar lies on y = 50 from x = 58 to 90; the square spans x 10..42, y 34..66
    assert ink[50, 70] > 200 and ink[40, 26] == 0
    # the pen-up move from the square's last corner (10, 34) to the bar's start is not drawn
    assert ink[42, 50] == 0
    # corners are background; anti-aliasing leaves grey levels along the edges
    assert ink[0, 0] == 0 and ink[99, 99] == 0
    edge = ink[45:56, 75]
    assert ((edge > 0) & (edge < 255)).any()


def test_png_colours_follow_the_palette():
    img = png.render_sketch(TWO_STROKES, size=100, margin=10, line_width=3.0, colour_strokes=True)
    rgb = np.asarray(img)
    assert tuple(rgb[50, 70]) == ImageColor.getrgb(layout.PALETTE[1])   # the bar, stroke 2
    assert tuple(rgb[34, 26]) == ImageColor.getrgb(layout.PALETTE[0])   # top edge of the square


def test_png_grid_strip_and_save(tmp_path):
    sketches = synthetic.make_doodles(3, categories=["fish", "cup"])
    grid = png.render_grid(sketches, cols=4, cell=60, titles=[f"t{i}" for i in range(6)])
    band = 10 + 6
    assert grid.size == (4 * 60 + 5, 2 * (60 + band) + 3)
    strip = png.render_strip(sketches.select([0, 1, 2]), captions=["a", "b", "c"], cell=50)
    assert strip.size == (3 * 50 + 4, 50 + band + 2)
    # captions sit below the cells: the caption band of the strip holds text pixels
    assert _ink(strip)[1 + 50:, :].max() > 0
    path = tmp_path / "sub" / "grid.png"
    png.save_png(grid, path)
    with Image.open(path) as back:
        assert back.size == grid.size
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temp file left behind


def test_save_grid_picks_the_format(tmp_path):
    sketches = synthetic.make_doodles(2, categories=["sun"])
    save_grid(sketches, tmp_path / "a.svg")
    save_grid(sketches, tmp_path / "a.png", colour_strokes=True)
    ET.parse(tmp_path / "a.svg")
    assert Image.open(tmp_path / "a.png").size == (2 * 128 + 3, 128 + 2)
    with pytest.raises(ConfigError, match="unknown drawing format"):
        save_grid(sketches, tmp_path / "a.jpg")


def test_loss_curves_png(tmp_path):
    log = tmp_path / "log.csv"
    rows = ["step,loss,valid_loss,lr"]
    for step in range(0, 200, 10):
        valid = f"{2.0 / (1 + step / 50):.4f}" if step % 50 == 0 else ""
        rows.append(f"{step},{3.0 / (1 + step / 30):.4f},{valid},0.001")
    log.write_text("\n".join(rows) + "\n")
    xs, ys = png.read_curves(log, series=["loss", "valid_loss"])
    assert len(xs["loss"]) == 20 and xs["valid_loss"].tolist() == [0, 50, 100, 150]
    img = png.plot_curves(log, tmp_path / "curves.png", series=["loss", "valid_loss"], title="run")
    assert img.size == (800, 480) and (tmp_path / "curves.png").exists()
    rgb = np.asarray(img).reshape(-1, 3)
    for colour in layout.PALETTE[:2]:  # both series are drawn in their own colours
        target = np.array(ImageColor.getrgb(colour))
        assert (np.abs(rgb - target).sum(1) < 30).sum() > 50
    png.plot_curves(log, tmp_path / "log.png", logy=True)
    with pytest.raises(DataError, match="no column"):
        png.plot_curves(log, series=["kl"])
    (tmp_path / "neg.csv").write_text("step,x\n0,-1\n1,2\n")
    with pytest.raises(DataError, match="log scale"):
        png.plot_curves(tmp_path / "neg.csv", logy=True)


def test_nice_ticks():
    assert png._nice_ticks(0, 10, 5) == [0, 2, 4, 6, 8, 10]
    assert png._nice_ticks(0.13, 0.91, 4) == pytest.approx([0.2, 0.4, 0.6, 0.8])


# ---- the command ---------------------------------------------------------------------------


@pytest.fixture
def run_cli(monkeypatch):
    monkeypatch.setattr(cli, "CLI_MODULES", ["sketchlab.cli.render"])
    return lambda *argv: cli.main([str(a) for a in argv])


@pytest.fixture
def sketch_file(tmp_path):
    path = tmp_path / "doodles.npz"
    synthetic.make_doodles(4).save(path)
    return path


def test_cli_renders_grid_and_single(run_cli, sketch_file, tmp_path, capsys):
    assert run_cli("render", sketch_file, "--out", tmp_path / "g.png", "--n", 6, "--cols", 3,
                   "--titles", "--colour-strokes") == 0
    assert Image.open(tmp_path / "g.png").size == (3 * 128 + 4, 2 * (128 + 20) + 3)
    assert run_cli("render", sketch_file, "--out", tmp_path / "one.svg", "--index", 5, "--size", 300) == 0
    root = ET.parse(tmp_path / "one.svg").getroot()
    assert root.get("width") == "300"
    assert len(root.findall(f".//{SVG_NS}path")) + len(root.findall(f".//{SVG_NS}circle")) == \
        int(Sketches.load(sketch_file)[5][:, 2].sum())
    assert "wrote" in capsys.readouterr().out


def test_cli_errors_are_clear(run_cli, sketch_file, tmp_path, capsys):
    assert run_cli("render", tmp_path / "missing.npz", "--out", tmp_path / "x.png") == 2
    assert "missing.npz: no such file" in capsys.readouterr().err
    assert run_cli("render", sketch_file, "--out", tmp_path / "x.gif") == 2
    assert "unknown drawing format '.gif'" in capsys.readouterr().err
    assert run_cli("render", sketch_file, "--out", tmp_path / "x.png", "--index", 20) == 2
    assert "--index 20 is out of range" in capsys.readouterr().err
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert run_cli("render", tmp_path / "junk.npz", "--out", tmp_path / "x.png") == 2
    assert "not a readable .npz" in capsys.readouterr().err
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    assert run_cli("render", tmp_path / "other.npz", "--out", tmp_path / "x.png") == 2
    assert "neither a sketchlab Sketches file" in capsys.readouterr().err


def test_cli_refuses_pickles_in_a_sketches_file(run_cli, tmp_path, capsys):
    # a file that claims to be a Sketches npz but carries an object (pickle) array
    bad = np.empty(1, dtype=object)
    bad[0] = {"evil": 1}
    np.savez(tmp_path / "bad.npz", points=bad, offsets=np.array([0, 1]))
    assert run_cli("render", tmp_path / "bad.npz", "--out", tmp_path / "x.png") == 2
    assert "bad.npz" in capsys.readouterr().err


def test_cli_reads_sketchrnn_npz_through_the_safe_loader(run_cli, tmp_path, monkeypatch):
    (path,) = synthetic.write_npz_dataset(tmp_path / "data", 10, categories=["fish"])
    monkeypatch.setattr(cli, "CLI_MODULES", ["sketchlab.cli.render"])
    assert run_cli("render", path, "--out", tmp_path / "v.svg", "--split", "valid") == 0
    root = ET.parse(tmp_path / "v.svg").getroot()
    expected = synthetic.make_doodles(1, ["fish"], 0, "valid")
    n_strokes = sum(int(s[:, 2].sum()) for s in expected)
    assert len(root.findall(f".//{SVG_NS}path")) + len(root.findall(f".//{SVG_NS}circle")) == n_strokes


def test_load_sketches_split_rules(sketch_file):
    with pytest.raises(ConfigError, match="drop --split"):
        load_sketch_file(sketch_file, "train")
    assert len(load_sketch_file(sketch_file)) == 4 * len(synthetic.CATEGORIES)


def test_huge_pictures_are_refused_before_any_memory_is_taken(run_cli, sketch_file, tmp_path, capsys):
    # --size 60000 used to grow to 24 GB and be killed by the kernel
    assert run_cli("render", sketch_file, "--out", tmp_path / "x.png", "--size", "60000") == 2
    err = capsys.readouterr().err
    assert "over the limit of 64 megapixels" in err and "smaller --size" in err
    assert not (tmp_path / "x.png").exists()


def test_drawing_animation_draws_each_sketch_in_place_and_ends_on_the_whole_grid(tmp_path):
    from PIL import Image

    from sketchlab.render.animation import drawing_frames, save_drawing_gif

    sk = synthetic.make_doodles(2, ["fish", "house"], 0, "valid")
    frames = drawing_frames(sk, frames=6, cols=2, cell=96)
    full = png.render_grid(sk, cols=2, cell=96)
    ink = [int((np.asarray(f.convert("L")) < 128).sum()) for f in frames]
    assert ink == sorted(ink) and ink[0] < ink[-1]                  # more ink frame by frame
    assert np.array_equal(np.asarray(frames[-1]), np.asarray(full))  # the last frame is the grid
    save_drawing_gif(sk, tmp_path / "a.gif", frames=6, cols=2, cell=96)
    gif = Image.open(tmp_path / "a.gif")
    assert gif.n_frames == 6 and gif.info["loop"] == 0
    with pytest.raises(ConfigError, match="frames=500"):
        drawing_frames(sk, frames=500)
