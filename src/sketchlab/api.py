"""The public Python API: load any trained run or pretrained model, then sample, encode,
reconstruct, heal, complete and interpolate, with sketches in raw data units in and out.

    import sketchlab
    model = sketchlab.load("sketch-rnn-spg5")            # a zoo name, or a run directory
    samples = model.sample(8, temperature=0.3, seed=0)   # Sketches, raw units
    codes = model.encode(samples)                        # (8, z_size) numpy array
    sketchlab.save(samples, "samples.png")               # .png, .svg, .npz or .ndjson

Sketches go in as `Sketches`, one stroke-3 array `(n, 3)` of raw offsets, or strokes in
absolute coordinates (`[[xs, ys], ...]`, as QuickDraw's ndjson `drawing`). The handle converts
them into the model's normalised units with the run's scale factor (a `Sketches` carries its own
units in `scale_factor`, so normalised sketches are converted too, never misread) and converts
every result back to raw units.

A capability a model lacks raises a `ConfigError` that names the models that have it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sketchlab import runs
from sketchlab.data.sketches import Sketches
from sketchlab.data.strokes import RAW_OFFSET_LIMIT, check_finite
from sketchlab.errors import ConfigError, DataError
from sketchlab.latent.interpolate import interpolate as interpolate_codes
from sketchlab.models.base import models_with
from sketchlab.nn.device import pick_device
from sketchlab.render import save_grid

# Each capability (a model class attribute) in words, for messages.
CAPABILITIES = {
    "can_sample": "draw new sketches without references",
    "can_encode": "turn sketches into latent codes (reconstruct, interpolate)",
    "can_heal": "repair corrupted sketches",
    "can_complete": "continue a partial drawing",
    "has_components": "sample from one component of a learned mixture prior",
}


def as_sketches(items: Any, what: str = "sketches") -> Sketches:
    """`Sketches`, one stroke-3 array, a list of stroke-3 arrays, or one sketch's strokes in
    absolute coordinates (`[[xs, ys], ...]`) -> `Sketches` (units kept; raw for plain arrays)."""
    if isinstance(items, Sketches):
        return items
    if isinstance(items, np.ndarray) and items.ndim == 2:
        return Sketches.from_list([items])
    if isinstance(items, (list, tuple)) and items:
        first = items[0]
        if isinstance(first, np.ndarray) and first.ndim == 2:
            return Sketches.from_list(list(items))
        if isinstance(first, (list, tuple)) and len(first) == 2 and not np.isscalar(first[0]):
            return Sketches.from_strokes(items)
    raise DataError(f"{what}: give Sketches, a stroke-3 array (n, 3), or strokes [[xs, ys], ...]")


class Model:
    """A loaded model: what `sketchlab.load` returns. Every method takes and returns sketches in
    raw data units; `seed` makes every random choice reproducible."""

    def __init__(self, run: runs.Run, source: str):
        self.run = run
        self.source = source
        self.module = run.model

    # ---- facts -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The model kind (`sketch-rnn`, `rpcl-pix2seq`, ...)."""
        return self.run.model_name

    @property
    def categories(self) -> list[str]:
        return self.run.categories

    @property
    def capabilities(self) -> set[str]:
        """What this model can do: names from `CAPABILITIES` (`can_sample`, ...)."""
        return {cap for cap in CAPABILITIES if getattr(self.module, cap, False)}

    @property
    def options(self):
        """This model's sampling options (a dataclass instance with its defaults)."""
        return self.module.make_options()

    @property
    def n_components(self) -> int | None:
        """How many prior components `sample(component=k)` picks from (None: no mixture prior)."""
        if not getattr(self.module, "has_components", False):
            return None
        return int(self.module.prior_weights().numel())

    @property
    def heal_strength(self) -> float | None:
        """The corruption `heal` applies when given no strength (None: not a `can_heal` model)."""
        if not getattr(self.module, "can_heal", False):
            return None
        return float(getattr(self.module.make_options(), self.module.heal_option) or 0.0)

    @property
    def scale_factor(self) -> float:
        return float(self.module.scale_factor)

    @property
    def config(self):
        return self.module.config

    def __repr__(self) -> str:
        cats = ", ".join(self.categories[:6]) + (", ..." if len(self.categories) > 6 else "")
        can = sorted(c.split("_", 1)[1] for c in self.capabilities)
        return (f"<sketchlab {self.name} from {self.source!r}: {cats or 'no categories'}; "
                f"can {', '.join(can) or 'nothing'}>")

    def describe(self) -> dict[str, Any]:
        """What produced a result: the model, where it came from, its categories."""
        return {"model": self.name, "source": self.source, "categories": self.categories}

    # ---- helpers -----------------------------------------------------------------------------
    def _need(self, capability: str) -> None:
        if not getattr(self.module, capability, False):
            have = ", ".join(models_with(capability)) or "none"
            raise ConfigError(f"a {self.name} model cannot {CAPABILITIES[capability]}; "
                              f"models that can: {have}")

    def _in(self, sketches, what: str = "sketches") -> Sketches:
        sk = as_sketches(sketches, what)
        if len(sk) == 0:
            raise DataError(f"{what}: no sketch given")
        check_finite(sk.points, what)
        pen = sk.points[:, 2]
        if np.any((pen != 0) & (pen != 1)):
            raise DataError(f"{what}: the pen column must hold 0 or 1")
        raw = sk.in_units(1.0)
        limit = self.max_points()
        if isinstance(limit, int) and (raw.lengths > limit).any():
            # Results line up with the inputs one to one: refuse rather than drop silently.
            bad = np.nonzero(raw.lengths > limit)[0].tolist()
            shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
            raise DataError(f"{what}: sketch{'es' if len(bad) > 1 else ''} {shown} of {len(raw)} "
                            f"{'are' if len(bad) > 1 else 'is'} longer than a {self.name} model "
                            f"takes ({limit} points); leave {'them' if len(bad) > 1 else 'it'} "
                            f"out or simplify {'them' if len(bad) > 1 else 'it'} "
                            f"(sketchlab.data.strokes.simplify)")
        points = raw.points.copy()     # the originals clip raw offsets to +-1000
        points[:, :2] = np.clip(points[:, :2], -RAW_OFFSET_LIMIT, RAW_OFFSET_LIMIT)
        return Sketches(points, raw.offsets, category=raw.category,
                        category_names=raw.category_names).in_units(self.scale_factor)

    def max_points(self) -> int | str:
        """The longest sketch this model takes (points), or "any"."""
        c = self.module.config
        for field in ("num_points", "max_seq_len"):
            value = getattr(c, field, 0)
            if isinstance(value, int) and value > 0:
                return value
        return "any"

    @staticmethod
    def _out(sketches: Sketches) -> Sketches:
        return sketches.in_units(1.0)

    @staticmethod
    def _given(options: dict) -> dict:
        return {k: v for k, v in options.items() if v is not None}

    # ---- the verbs ---------------------------------------------------------------------------
    def sample(self, n: int = 16, *, temperature: float | None = None, seed: int = 0,
               component: int | None = None, **options) -> Sketches:
        """`n` new sketches (from the prior, the unconditional decoder or the diffusion chain);
        `component` picks one prior component (RPCL models)."""
        self._need("can_sample")
        if component is not None:
            self._need("has_components")
        return self._out(self.module.generate(int(n), seed=seed, **self._given(
            dict(options, temperature=temperature, component=component))))

    def encode(self, sketches) -> np.ndarray:
        """Latent codes `(N, z_size)` of the sketches (the posterior mean for the VAEs)."""
        self._need("can_encode")
        return self.module.encode_sketches(self._in(sketches)).cpu().numpy()

    def decode(self, codes, *, temperature: float | None = None, seed: int = 0) -> Sketches:
        """Sketches drawn from latent codes `(N, z_size)`."""
        self._need("can_encode")
        z = torch.as_tensor(np.asarray(codes, np.float32))
        if z.ndim != 2:
            raise DataError(f"codes: expected an (N, z_size) array, got shape {tuple(z.shape)}")
        return self._out(self.module.decode_codes(z, temperature=temperature, seed=seed))

    def reconstruct(self, sketches, *, temperature: float | None = None, seed: int = 0,
                    **options) -> Sketches:
        """Each sketch encoded and redrawn by the model (conditional generation)."""
        self._need("can_encode")
        return self._out(self.module.generate(references=self._in(sketches), seed=seed,
                                              **self._given(dict(options, temperature=temperature))))

    def heal(self, sketches, strength: float | None = None, *, temperature: float | None = None,
             seed: int = 0, **options) -> Sketches:
        """Corrupt each sketch the way the model's paper does (`strength`: SP-gra2seq's patch
        masking probability, SketchGloc's stroke displacement, SketchKnitter's noise level), then
        redraw it. `strength=0` redraws the sketches as given (heal what is already broken)."""
        self._need("can_heal")
        if strength is None:
            strength = self.heal_strength
        return self._out(self.module.heal(self._in(sketches), strength=float(strength), seed=seed,
                                          **self._given(dict(options, temperature=temperature))))

    def corrupt(self, sketches, strength: float, *, seed: int = 0) -> Sketches:
        """The sketches as `heal(sketches, strength, seed=seed)` corrupts them before redrawing
        (SP-gra2seq: the points under masked patches removed; SketchGloc: strokes moved;
        SketchKnitter: noised to t0), for pictures of healing: corrupted, then healed."""
        self._need("can_heal")
        return self._out(self.module.corrupt(self._in(sketches), strength=float(strength),
                                             seed=seed))

    def complete(self, partial, n: int = 4, *, temperature: float | None = None,
                 seed: int = 0) -> Sketches:
        """`n` continuations of each partial drawing (each result starts with its prefix)."""
        self._need("can_complete")
        prefix = self._in(partial, "partial drawing")
        return self._out(self.module.complete(prefix, int(n), seed=seed,
                                              **self._given(dict(temperature=temperature))))

    def interpolate(self, a, b, steps: int = 8, *, temperature: float | None = None,
                    seed: int = 0, spherical: bool = True) -> Sketches:
        """Sketches decoded along the path between the codes of sketches `a` and `b`."""
        self._need("can_encode")
        if steps < 2:
            raise ConfigError(f"steps={steps}: need at least 2 (the two ends)")
        ends = Sketches.concat([as_sketches(a, "a")[[0]], as_sketches(b, "b")[[0]]])
        za, zb = self.encode(ends)
        path = interpolate_codes(torch.from_numpy(za), torch.from_numpy(zb), steps,
                                 spherical=spherical)
        return self.decode(path.numpy(), temperature=temperature, seed=seed)


def load(path_or_name: str | Path, device: str | torch.device | None = None,
         which: str | None = None) -> Model:
    """Load a run directory (made by `sketchlab train`) or a pretrained model by name
    (`sketchlab zoo list`); a local path wins over a zoo name, `zoo:NAME` forces the zoo.
    `which`: "best" or "latest" weights; None: the model's choice (best; SketchKnitter's
    faithful mode: the final weights, as the original samples them)."""
    run = runs.open_run(path_or_name, device=pick_device(device), which=which)
    return Model(run, str(path_or_name))


def save(sketches, path: str | Path, **kw) -> Path:
    """Write sketches by extension: `.npz` (pickle-free Sketches), `.ndjson` (QuickDraw
    simplified), `.png` / `.svg` (a grid; keywords go to `sketchlab.render.save_grid`)."""
    sk = as_sketches(sketches)
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".npz":
        sk.save(path)
    elif ext == ".ndjson":
        sk.to_ndjson(path)
    elif ext in (".png", ".svg"):
        save_grid(sk, path, **kw)
    else:
        raise ConfigError(f"{path}: unknown format {ext or '(none)'}; use .npz, .ndjson, .png or .svg")
    return path


__all__ = ["Model", "as_sketches", "load", "save"]
