"""The README's Python API example runs as written (on the installed zoo, or on tiny stand-ins
of its entries when they are not installed)."""

import re

import pytest

from conftest import REPO


def readme_block(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_api_example_runs(tiny_zoo, tmp_path, monkeypatch):
    from sketchlab import zoo

    code = readme_block("## Python API")
    used = set(re.findall(r'sketchlab\.load\("([^"]+)"\)', code))
    assert used, "the example loads no model"
    if not used <= set(zoo.names()):
        monkeypatch.setattr(zoo, "ZOO_DIR", tiny_zoo)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "redrawn.png").is_file()
