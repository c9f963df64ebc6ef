"""The README's tour, as written, command by command, in a fresh folder on the real SPG data.

Each command runs exactly as the README spells it, with small overrides appended so that it
finishes in seconds: a training of two steps (at the README's --preset cpu, small batches) on a
few sketches per category, a classifier of one step, a cheap Geometry Score. A command that fails fails the test.
Commands that need the network (`data download`) are skipped.
"""

import re
import shlex

import pytest

from conftest import REPO
from sketchlab import cli

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

TINY_TRAIN = ["--max-steps", "2", "--limit-per-category", "12"]
TINY_BY_COMMAND = {
    "classifier": ["--max-steps", "1", "--epochs", "1", "--width", "0.25", "--limit", "12",
                   "--valid-limit", "6", "--batch-size", "8"],
    "evaluate": ["--gs-runs", "2", "--gs-workers", "1", "--per-category", "6"],
    "compare": ["--gs-runs", "2", "--gs-workers", "1", "--per-category", "6"],
}


def tour_commands() -> list[str]:
    """The shell commands of the README's tour block, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## A short tour"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.replace("\\\n", " ").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def tiny_hparams(model: str) -> str:
    """On top of what the README gives (its --preset cpu): small batches, validation at step 2."""
    return "batch_size=8,eval_every=2"


def tiny(argv: list[str]) -> list[str]:
    """The command with the overrides that make it small."""
    if argv[0] == "train" and "--list-hparams" not in argv:
        out = []
        skip = False
        for i, a in enumerate(argv):
            if skip:
                skip = False
                continue
            if a == "--max-minutes":
                skip = True
                continue
            out.append(a)
        hp = tiny_hparams(argv[1])
        if "--hparams" in out:
            k = out.index("--hparams") + 1
            out[k] = out[k] + "," + hp
        else:
            out += ["--hparams", hp]
        return out + TINY_TRAIN
    if argv[0] == "data" and argv[1] == "import":
        return argv + ["--categories", "apple,cactus,pig"]
    return argv + TINY_BY_COMMAND.get(argv[0], [])


def test_the_readme_tour_runs_as_written(tmp_path, monkeypatch, shared_data, capsys):
    commands = tour_commands()
    assert len(commands) > 15 and all("..." not in c for c in commands)
    monkeypatch.chdir(tmp_path)                          # a fresh folder, as a new user's
    monkeypatch.setenv("SKETCHLAB_PROGRESS_EVERY", "600")
    ran = []
    for line in commands:
        words = shlex.split(line, comments=True)
        if words[0] == "source":
            continue
        assert words[0] == "sketchlab", line
        argv = [w.replace("../shared/data", str(shared_data)) for w in words[1:]]
        if argv[:2] == ["data", "download"]:
            continue                                      # needs the network
        rc = cli.main(tiny(argv))
        captured = capsys.readouterr()
        assert rc == 0, f"`{line}` failed:\n{captured.err[-2000:]}"
        ran.append(argv[0])
    assert {"data", "train", "sample", "render", "latent", "classifier", "evaluate",
            "compare"} <= set(ran)
    for f in ("samples.npz", "samples.png", "cond.png", "healed.png", "grid.svg", "map.png",
              "walk.png", "metrics.json", "free.json", "table.json", "table.md"):
        assert (tmp_path / f).is_file(), f


def test_the_pretrained_models_block_runs_as_written(tmp_path, monkeypatch, shared_data, capsys):
    """The README's "Pretrained models" commands, as written, in a fresh folder (the data import
    limited to the five categories the entries know); commands naming an entry this checkout
    does not ship are skipped."""
    from sketchlab import zoo

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Pretrained models"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    monkeypatch.chdir(tmp_path)
    installed = set(zoo.names())
    ran = 0
    for line in commands:
        words = shlex.split(line, comments=True)
        assert words[0] == "sketchlab", line
        argv = [w.replace("../shared/data", str(shared_data)) for w in words[1:]]
        named = {w for w in argv if w.endswith("-spg5") or w.endswith("-sheep")}
        if named - installed:
            continue
        if argv[:2] == ["data", "import"]:
            argv += ["--categories", "airplane,apple,butterfly,cactus,pig"]
        rc = cli.main(argv)
        captured = capsys.readouterr()
        assert rc == 0, f"`{line}` failed:\n{captured.err[-2000:]}"
        ran += 1
    assert ran >= 3
