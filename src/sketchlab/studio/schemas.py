"""The studio's request bodies: what a client may send, with every size bounded.

A drawing travels as a list of strokes in absolute raw units, QuickDraw's ndjson `drawing`
layout: `[[xs, ys], ...]` (a third list, QuickDraw raw's times, is accepted and ignored). The
bounds below are checked before a model sees anything, so a request's work is bounded by its
shape: at most `MAX_STROKES` strokes and `MAX_POINTS` points, every coordinate finite and within
`COORD_LIMIT`, at most `MAX_RESULTS` sketches asked for.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Bounds of one drawing. QuickDraw's simplified drawings have a few hundred points at most and
# its raw ones a few thousand; a person drawing for a minute stays far below these.
MAX_STROKES = 200
MAX_POINTS = 5000
COORD_LIMIT = 1e5
# Bounds of the work asked for.
MAX_RESULTS = 16          # sketches per sample / redraw / heal / complete call
MAX_STEPS = 16            # interpolation steps (both ends included)
MAX_MASKS = 16            # rectangles masked before healing
MAX_SEED = 2**31 - 1
MAX_TEMPERATURE = 4.0

Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Body(BaseModel):
    # Unknown keys are refused (a typo such as "temprature" is named, not silently ignored);
    # NaN and infinities are refused everywhere.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=200)


def check_drawing(value: Any, what: str) -> list[list[list[float]]]:
    """A drawing `[[xs, ys], ...]` checked against the bounds; returns `[[xs, ys], ...]` of floats
    (times dropped). Raises ValueError with a message that names the stroke at fault."""
    if not isinstance(value, list):
        raise ValueError(f"{what}: expected a list of strokes [[xs, ys], ...]")
    if not value:
        raise ValueError(f"{what}: empty drawing (no strokes)")
    if len(value) > MAX_STROKES:
        raise ValueError(f"{what}: {len(value)} strokes; at most {MAX_STROKES}")
    out, total = [], 0
    for i, stroke in enumerate(value):
        if not isinstance(stroke, list) or len(stroke) not in (2, 3):
            raise ValueError(f"{what}: stroke {i} must be [xs, ys] (or QuickDraw raw's [xs, ys, ts])")
        xs, ys = stroke[0], stroke[1]
        if not isinstance(xs, list) or not isinstance(ys, list):
            raise ValueError(f"{what}: stroke {i}: xs and ys must be lists of numbers")
        if len(xs) != len(ys):
            raise ValueError(f"{what}: stroke {i} has {len(xs)} xs but {len(ys)} ys")
        total += len(xs)
        if total > MAX_POINTS:
            raise ValueError(f"{what}: more than {MAX_POINTS} points; simplify the drawing")
        if not xs:
            continue                  # an empty stroke (a tap that moved nowhere) is dropped
        clean = []
        for axis in (xs, ys):
            for v in axis:
                # bool is an int to Python; a drawing of True/False is a client bug, not a sketch
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ValueError(f"{what}: stroke {i} holds a non-number ({type(v).__name__})")
                if not (-COORD_LIMIT <= v <= COORD_LIMIT):   # also false for NaN
                    raise ValueError(f"{what}: stroke {i} holds {v!r}; coordinates must be finite "
                                     f"and within +-{COORD_LIMIT:g}")
            clean.append([float(v) for v in axis])
        out.append(clean)
    if not out:
        raise ValueError(f"{what}: empty drawing (every stroke has no points)")
    return out


class Mask(_Body):
    """A rectangle (raw units) whose points are removed before healing."""
    x0: Finite
    y0: Finite
    x1: Finite
    y1: Finite


class _Sampling(_Body):
    model: str = Field(min_length=1, max_length=200)
    temperature: Finite | None = Field(default=None, gt=0, le=MAX_TEMPERATURE)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)


class SampleRequest(_Sampling):
    n: int = Field(default=4, ge=1, le=MAX_RESULTS)
    component: int | None = Field(default=None, ge=0, le=10_000)
    category: str | None = Field(default=None, min_length=1, max_length=200)


class _OneDrawing(_Sampling):
    sketch: list

    @field_validator("sketch", mode="before")
    @classmethod
    def _drawing(cls, v):
        return check_drawing(v, "sketch")


class ReconstructRequest(_OneDrawing):
    n: int = Field(default=1, ge=1, le=MAX_RESULTS)


class HealRequest(_OneDrawing):
    n: int = Field(default=1, ge=1, le=MAX_RESULTS)
    strength: Finite | None = Field(default=None, ge=0, le=1)
    masks: list[Mask] = Field(default_factory=list, max_length=MAX_MASKS)


class CompleteRequest(_OneDrawing):
    n: int = Field(default=4, ge=1, le=MAX_RESULTS)


class InterpolateRequest(_Sampling):
    a: list
    b: list
    steps: int = Field(default=6, ge=2, le=MAX_STEPS)

    @field_validator("a", "b", mode="before")
    @classmethod
    def _drawing(cls, v, info):
        return check_drawing(v, info.field_name)


LIMITS = {"max_strokes": MAX_STROKES, "max_points": MAX_POINTS, "coord_limit": COORD_LIMIT,
          "max_results": MAX_RESULTS, "max_steps": MAX_STEPS, "max_masks": MAX_MASKS,
          "max_temperature": MAX_TEMPERATURE}
