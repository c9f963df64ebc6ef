"""The studio: a local web app where a person draws with the models in a browser.

    sketchlab serve                                  # every pretrained model, on 127.0.0.1:8000
    sketchlab serve --models runs/sheep,sketch-rnn-spg5

A page served from this package (no CDN, no build step: it works offline) and a small JSON API
under `/api/` (see `sketchlab.studio.app`) over the public API (`sketchlab.load`): complete,
redraw, heal, sample and interpolate, with sketches as stroke lists in raw units.

Needs the `studio` extra (`pip install sketchlab[studio]`: FastAPI and uvicorn). Face code: it
uses the public API, run directories and the zoo, and nothing imports it.
"""

from __future__ import annotations

import re
from pathlib import Path

from sketchlab import api, zoo
from sketchlab.errors import ConfigError
from sketchlab.studio.app import Studio, StudioSettings, create_app

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def model_id(spec: str) -> str:
    """The id a model is served under: a zoo name as it is, a run directory by its folder name."""
    text = str(spec)
    if text.startswith(zoo.PREFIX):
        text = text[len(zoo.PREFIX):]
    elif Path(text).exists():
        # the folder's name as given (a link keeps its own name); "." and ".." by where they lead
        name = Path(text).name
        text = name if name not in ("", ".", "..") else Path(text).resolve().name
    return _SAFE.sub("-", text).strip("-.") or "model"


def load_models(specs: list[str] | None = None, device=None, log=print) -> dict[str, api.Model]:
    """Load run directories or zoo names (default: every zoo entry) -> {id: Model}."""
    if specs is None:
        specs = zoo.names()
        if not specs:
            raise ConfigError("no pretrained models are installed; name run directories: "
                              "sketchlab serve --models runs/a,runs/b")
    models: dict[str, api.Model] = {}
    for spec in specs:
        base = model_id(spec)
        name, k = base, 2
        while name in models:
            name, k = f"{base}-{k}", k + 1
        models[name] = api.load(spec, device=device)
        log(f"loaded {name}: {models[name]!r}")
    return models


__all__ = ["Studio", "StudioSettings", "create_app", "load_models", "model_id"]
