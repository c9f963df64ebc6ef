"""sketchlab: vector-sketch models on a current PyTorch.

The public surface most users need:

    from sketchlab.data.sketches import Sketches
    from sketchlab.data.npz import load_npz
"""

__version__ = "0.1.0"
