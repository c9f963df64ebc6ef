"""Progress of long work (training, diffusion sampling, r-Shortcut calibration, feature
extraction, imports and downloads), shown the same way everywhere:

* on a terminal: a tqdm bar with the rate and the time left;
* into a log file or a pipe: one plain line every `interval()` seconds (`SKETCHLAB_PROGRESS_EVERY`,
  default 30) with the count, the rate, the elapsed time and the ETA, and a closing line when the
  work took long enough to have printed one, instead of carriage-return bar updates that fill a
  log with kilobytes of redraws and glue the next message onto a half-drawn bar;
* nothing under `quiet()` (`--quiet` on the command line) or with `enabled=False`; with
  `enabled=None`, a bar on a terminal and nothing in a log.

    with Progress(total=1000, desc="sampling", unit="step") as bar:
        for _ in range(1000):
            ...
            bar.update(1, loss=0.12)

    for t in track(timesteps, desc="sampling", unit="step", enabled=progress):
        ...
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

# `quiet()` sets this for the duration of one command; nothing else changes it.
_QUIET = [False]


@contextlib.contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """Turn every progress display off (on=True) while the block runs."""
    before = _QUIET[0]
    _QUIET[0] = bool(on) or before
    try:
        yield
    finally:
        _QUIET[0] = before


def is_quiet() -> bool:
    return _QUIET[0]


def interval() -> float:
    """Seconds between two progress lines when the output is not a terminal."""
    text = os.environ.get("SKETCHLAB_PROGRESS_EVERY", "")
    try:
        value = float(text) if text else 30.0
    except ValueError:
        value = 30.0
    return value if math.isfinite(value) and value >= 0 else 30.0


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def format_duration(seconds: float) -> str:
    """1:02:03, 4:05 or 0:07."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Count units of work toward `total` (None: unknown) and show it (see the module docstring).

    `enabled=None` shows a bar on a terminal and nothing elsewhere (a library's default: a
    notebook or a terminal sees the bar, a log stays clean). `stream` defaults to stderr;
    `every` overrides `interval()` for the line mode; `leave=False` removes a terminal bar once
    it closes (inner loops)."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", *,
                 enabled: bool | None = True, initial: int = 0, stream: TextIO | None = None,
                 every: float | None = None, leave: bool = True, unit_scale: bool = False):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.unit_scale = unit_scale
        self.n = int(initial)
        self.stream = stream if stream is not None else sys.stderr
        terminal = _is_terminal(self.stream)
        self.enabled = (terminal if enabled is None else bool(enabled)) and not is_quiet()
        self.every = interval() if every is None else float(every)
        self.postfix: dict[str, object] = {}
        self._t0 = time.monotonic()
        self._start_n = self.n
        self._last_line = self._t0
        self._lines = 0
        self._closed = False
        self._bar = None
        if self.enabled and terminal:
            self._bar = tqdm(total=total, initial=self.n, desc=desc or None, unit=unit,
                             dynamic_ncols=True, leave=leave, file=self.stream,
                             unit_scale=unit_scale)

    # ---- counting ---------------------------------------------------------------------------
    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if postfix:
            self.postfix.update(postfix)
        if not self.enabled:
            return
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _short(v) for k, v in self.postfix.items()},
                                      refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_line >= self.every:
            self._last_line = now
            self._print(self.line(now))

    def set_postfix(self, **postfix) -> None:
        self.update(0, **postfix)

    def line(self, now: float | None = None) -> str:
        """The progress as one line: count (and share), rate, elapsed time and ETA."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._t0
        done = self.n - self._start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        num = _si if self.unit_scale else str
        if self.total:
            count = (f"{num(self.n)}/{num(self.total)} {self.unit} "
                     f"({100.0 * self.n / self.total:.0f}%)")
        else:
            count = f"{num(self.n)} {self.unit}"
        speed = _si(rate) if self.unit_scale else f"{rate:.3g}"
        parts = [count, f"{speed} {self.unit}/s" if rate else "",
                 f"{format_duration(elapsed)} elapsed"]
        if self.total and rate > 0:
            parts.append(f"ETA {format_duration((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(" ".join(f"{k}={_short(v)}" for k, v in self.postfix.items()))
        return head + ", ".join(p for p in parts if p)

    def write(self, text: str) -> None:
        """Print a whole line without tearing a terminal bar (stdout, as `print`)."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
        self._lines += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self._lines:
            # A long job that reported along the way says when it finished.
            elapsed = time.monotonic() - self._t0
            head = f"{self.desc}: " if self.desc else ""
            num = _si(self.n) if self.unit_scale else str(self.n)
            self._print(f"{head}done, {num} {self.unit} in {format_duration(elapsed)}")

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _si(value: float) -> str:
    """1234567 -> 1.23M (bytes and other large counts)."""
    for prefix in ("", "k", "M", "G"):
        if abs(value) < 1000:
            return f"{value:.3g}{prefix}"
        value /= 1000.0
    return f"{value:.3g}T"


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def track(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it", *,
          enabled: bool | None = True, leave: bool = True,
          every: float | None = None) -> Iterator[T]:
    """Iterate over `iterable`, counting each item with a `Progress`."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(total, desc, unit, enabled=enabled, leave=leave, every=every) as bar:
        for item in iterable:
            yield item
            bar.update(1)


__all__ = ["Progress", "format_duration", "interval", "is_quiet", "quiet", "track"]
