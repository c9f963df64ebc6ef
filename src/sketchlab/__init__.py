"""sketchlab: vector-sketch models on a current PyTorch.

The public API (see `sketchlab.api`):

    import sketchlab
    model = sketchlab.load("rpcl-pix2seq-spg5")      # a pretrained name or a run directory
    sketches = model.sample(8, seed=0)
    sketchlab.save(sketches, "samples.png")
"""

import importlib

__version__ = "0.1.0"

# `sketchlab.load`, `.save`, `.Sketches` and `.Model` resolve on first use (PEP 562), so
# `import sketchlab` stays light and the package root does not depend on the layers above it.
_PUBLIC = {"load": "sketchlab.api", "save": "sketchlab.api", "Model": "sketchlab.api",
           "Sketches": "sketchlab.data.sketches"}


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'sketchlab' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_PUBLIC])
