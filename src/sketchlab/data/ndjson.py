"""QuickDraw ndjson -> sketch-rnn npz (`sketchlab data import`).

Three flavours, detected per line (`detect_format`): Google's *simplified* ndjson (`[xs, ys]` per
stroke, already aligned, scaled to 0..255 and RDP-simplified), its *raw* ndjson (`[xs, ys, ts]`)
and SPG's (`[xs, ys, part_ids]`, dense integer points). `drawing_to_stroke3` turns one drawing
into sketch-rnn's int16 stroke-3; `import_ndjson` converts whole files into one npz per category,
with splits from a splits file or a seeded split. One bad drawing among a million must not stop a
conversion: import drops and counts bad lines instead of raising. The conversion runs on every
core: chunks of lines go to worker processes and come back merged in file and line order, so
the npz files are the same bit for bit with any number of processes.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import sys
import time
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from sketchlab.data import strokes as S
from sketchlab.data.npz import SPLITS, save_sketchrnn_npz
from sketchlab.data.sources import category_filename, expand_paths, parse_categories
from sketchlab.data.strokes import BadDrawing, from_polylines
from sketchlab.errors import ConfigError, DataError, OutputError
from sketchlab.fileio import atomic_open
from sketchlab.progress import Progress

IMPORT_FORMATS = ("auto", "simplified", "raw", "spg")
# Drawings longer than this after simplification are dropped (sketch-rnn data is < 300).
DEFAULT_IMPORT_MAX_POINTS = 1000


def detect_format(obj: dict) -> str:
    """Which ndjson flavour a parsed line is.

    SPG lines carry `"i"` and no `"word"` (strokes `[xs, ys, part_ids]`, a few with the part ids
    twice). Otherwise 3+ lists per stroke is Google's *raw* format (`[xs, ys, ts]`) and 2 lists its
    *simplified* one (`[xs, ys]`).
    """
    if "i" in obj and "word" not in obj:
        return "spg"
    drawing = obj.get("drawing")
    stroke = next((s for s in drawing if s), None) if isinstance(drawing, list) else None
    return "raw" if isinstance(stroke, list) and len(stroke) >= 3 else "simplified"


def drawing_to_stroke3(drawing, fmt: str, *, epsilon: float = 2.0,
                       max_points: int = DEFAULT_IMPORT_MAX_POINTS) -> np.ndarray:
    """One ndjson `drawing` -> int16 stroke-3 in sketch-rnn's conventions.

    * simplified: already aligned, scaled to 0..255 and RDP'd; only made relative.
    * raw: align to the top-left (min 0), scale uniformly so the longest side is 255, RDP with
      `epsilon` per stroke, round to integers, then deltas. The third list (timestamps) is not
      used: the arrays' order is the drawing order, so non-monotone timestamps change nothing.
    * spg: integer points already in 0..255 but dense: RDP with `epsilon`, then deltas; the third
      list (part ids) is not used.

    Raises `BadDrawing`, a DataError whose `reason` is what import drops and counts. (The import
    runs the same three steps, with the RDP batched over many drawings.)
    """
    lines = _parse_drawing(drawing, fmt, max_points)
    if fmt in ("raw", "spg"):
        lines = S.rdp_many(lines, epsilon)
    return _finish_drawing(lines, max_points)


def _parse_drawing(drawing, fmt: str, max_points: int) -> list[np.ndarray]:
    """Validate a drawing and return its strokes as float64 `(k, 2)` (raw: aligned and scaled)."""
    lines = S.parse_drawing(drawing, extra_lists=True)
    if sum(len(line) for line in lines) > 100 * max_points:
        raise BadDrawing("too many points")  # hopeless even after RDP; do not spend time on it
    if fmt == "raw":
        pooled = np.concatenate(lines)
        low = pooled.min(axis=0)
        extent = float((pooled.max(axis=0) - low).max())
        if extent <= 0:
            raise BadDrawing("single point")
        lines = [(line - low) * (255.0 / extent) for line in lines]
    return lines


def _finish_drawing(lines: list[np.ndarray], max_points: int) -> np.ndarray:
    # Integer absolute coordinates first, then deltas: rounding never accumulates.
    lines = [np.rint(line) for line in lines]
    total = sum(len(line) for line in lines)
    if total < 2:
        raise BadDrawing("single point")
    if total > max_points:
        raise BadDrawing("too many points")
    s3 = from_polylines(lines)
    if np.abs(s3[:, :2]).max() > np.iinfo(np.int16).max:
        raise BadDrawing("offsets beyond int16")
    return s3.astype(np.int16)


def _category_key(name: str) -> str:
    """Names compare without case and with `_` == ` ` ("alarm_clock" matches "alarm clock")."""
    return name.strip().lower().replace("_", " ")


def _ndjson_files(sources: Sequence[str | os.PathLike]) -> list[Path]:
    return expand_paths(sources, (".ndjson", ".ndjson.gz"), ".ndjson")


def _file_category(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".ndjson"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name


def read_splits_file(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """`{category: {split: [key_id, ...]}}` (SPG's splits.json) -> `{category: {key_id: split}}`."""
    try:
        raw = json.loads(Path(path).read_bytes())
    except RecursionError:
        raise DataError(f"{path}: cannot read the splits file (JSON nested too deeply)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the splits file ({e})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected {{category: {{split: [key_id, ...]}}}}")
    out: dict[str, dict[str, str]] = {}
    for cat, splits in raw.items():
        if not isinstance(splits, dict):
            raise DataError(f"{path}: category {cat!r} must map split names to key_id lists")
        table: dict[str, str] = {}
        for split, ids in splits.items():
            if split not in SPLITS or not isinstance(ids, list):
                raise DataError(f"{path}: category {cat!r}: split {split!r} is not one of {SPLITS} "
                                f"with a list of key_ids")
            for key in ids:
                table[str(key)] = split
        out[_category_key(cat)] = table
    return out


class _Category:
    """Sketches collected for one category while importing."""

    def __init__(self, name: str):
        self.name = name
        self.sketches: list[np.ndarray] = []
        self.key_ids: list[str] = []
        self.given: list[str | None] = []  # split named by a splits file, if any
        self.seen_keys: set[str] = set()
        self.dropped: Counter = Counter()
        self.sources: set[str] = set()
        self.splits_file: str | None = None


def _assign_splits(cat: _Category, fractions: tuple[float, float, float], seed: int) -> dict:
    """Indices per split. Given splits are kept; the rest is split by `fractions` with a seeded
    permutation; when a splits file gives no test split (SPG withholds it), a test split as large
    as the valid split (or `fractions[2]` of the total without one) is carved out of train."""
    rng = np.random.default_rng([seed, zlib.crc32(cat.name.encode("utf-8"))])
    idx = {s: [i for i, g in enumerate(cat.given) if g == s] for s in SPLITS}
    free = np.array([i for i, g in enumerate(cat.given) if g is None], dtype=np.int64)
    if len(free):
        perm = free[rng.permutation(len(free))]
        n = len(free)
        sizes = [int(round(n * f)) if f > 0 else 0 for f in fractions]
        for k in (1, 2):  # a small set still gets one valid and one test sketch
            if fractions[k] > 0 and n >= 3:
                sizes[k] = max(sizes[k], 1)
        n_valid, n_test = sizes[1], sizes[2]
        idx["valid"] += perm[:n_valid].tolist()
        idx["test"] += perm[n_valid:n_valid + n_test].tolist()
        idx["train"] += perm[n_valid + n_test:].tolist()
    carved = 0
    if cat.splits_file and not idx["test"] and len(idx["train"]) > 1 and fractions[2] > 0:
        total = len(cat.given)
        carved = len(idx["valid"]) or max(1, int(round(total * fractions[2])))
        carved = min(carved, len(idx["train"]) - 1)
        pick = set(rng.choice(np.array(idx["train"]), size=carved, replace=False).tolist())
        idx["test"] = [i for i in idx["train"] if i in pick]
        idx["train"] = [i for i in idx["train"] if i not in pick]
    return {"indices": {s: sorted(v) for s, v in idx.items()}, "test_carved_from_train": carved}


def _write_category(cat: _Category, out_dir: Path, fractions: tuple[float, float, float],
                    seed: int, epsilon: float, max_points: int) -> dict:
    """Split one imported category, write `<name>.npz` atomically, return its report entry."""
    if not cat.sketches:
        return {"file": None, "dropped": dict(cat.dropped),
                "note": "no usable drawing; nothing written"}
    plan = _assign_splits(cat, fractions, seed)
    lengths = np.array([len(s) for s in cat.sketches])
    entry = {
        "file": category_filename(cat.name),
        **{s: len(plan["indices"][s]) for s in SPLITS},
        "mean_length": round(float(lengths.mean()), 1),
        "max_length": int(lengths.max()),
        "split_source": cat.splits_file or (f"seeded {'/'.join(f'{f:.4g}' for f in fractions)} "
                                            f"(seed {seed})"),
        "test_carved_from_train": plan["test_carved_from_train"],
        "dropped": dict(cat.dropped),
        "sources": sorted(cat.sources),
    }
    provenance = {"category": cat.name, "epsilon": epsilon, "max_points": max_points,
                  "seed": seed, **{k: entry[k] for k in (
                      "split_source", "test_carved_from_train", "sources")}}
    extra = {f"{s}_key_ids": np.array([cat.key_ids[i] for i in plan["indices"][s]],
                                      dtype=np.str_) for s in SPLITS}
    extra["sketchlab_import"] = np.array(json.dumps(provenance))
    save_sketchrnn_npz(out_dir / entry["file"],
                       {s: [cat.sketches[i] for i in plan["indices"][s]] for s in SPLITS},
                       extra=extra)
    return entry


# --------------------------------------------------------------------------------------------
# Import: chunks of lines are converted independently (in worker processes when there are
# several), then merged in file and line order, so the result does not depend on how many
# processes ran or where the chunks were cut.
# --------------------------------------------------------------------------------------------

# Plain files are cut into byte ranges of about this size (at line ends); a gzip file is one task.
DEFAULT_CHUNK_BYTES = 4 << 20
_MIN_CHUNK_BYTES = 256 << 10
# Below this many bytes in all, the import runs in this process: starting workers costs more.
_MIN_PARALLEL_BYTES = 2 << 20
# Drawings converted in one vectorised RDP pass.
_RDP_BATCH = 2000

# Outcome of one non-blank line, as a worker reports it (merged in order by `import_ndjson`).
_BAD_LINE, _FILTERED, _DRAWING, _JOINED = 0, 1, 2, 3


def default_processes() -> int:
    """The CPU cores this process may run on (`sched_getaffinity`, else `os.cpu_count()`)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _plan_tasks(files: list[Path], chunk_bytes: int) -> list[tuple[int, int, int | None]]:
    """(file index, start byte, end byte or None for the whole file) per task, in file order; plain
    files larger than `chunk_bytes` are cut just after a newline."""
    tasks: list[tuple[int, int, int | None]] = []
    for k, file in enumerate(files):
        size = file.stat().st_size
        if file.name.endswith(".gz") or size <= chunk_bytes:
            tasks.append((k, 0, None))
            continue
        cuts = [0]
        with open(file, "rb") as fh:
            while cuts[-1] + chunk_bytes < size:
                fh.seek(cuts[-1] + chunk_bytes)
                fh.readline()  # to the end of the line the cut fell into
                pos = fh.tell()
                if pos >= size:
                    break
                cuts.append(pos)
        tasks += [(k, a, b) for a, b in zip(cuts, cuts[1:] + [None])]
    return tasks


def _convert_chunk(path: str, start: int, end: int | None, fmt: str, wanted: frozenset | None,
                   stem_category: str, max_points: int, epsilon: float) -> dict:
    """Convert the lines of `path[start:end]` (the whole file when `end` is None): per non-blank
    line (line number within the chunk, outcome, ...), the drawings' int16 stroke-3 back to back
    with their lengths, the chunk's line count and bytes. Pure: no state across chunks, so the
    workers of a parallel import and a one-process import compute the same records."""
    cpu0 = time.process_time()
    records: list[tuple] = []
    parsed: list[tuple[int, str, list[np.ndarray]]] = []  # (record index, format, lines)
    sketches: list[np.ndarray] = []
    outcome: dict[int, object] = {}  # record index -> sketch index or drop reason

    def flush():
        dense = [item for item in parsed if item[1] in ("raw", "spg")]
        simplified = iter(S.rdp_many([ln for item in dense for ln in item[2]], epsilon))
        for rec, line_fmt, lines in parsed:
            if line_fmt in ("raw", "spg"):
                lines = [next(simplified) for _ in lines]
            try:
                s3 = _finish_drawing(lines, max_points)
            except BadDrawing as e:
                outcome[rec] = e.reason
                continue
            outcome[rec] = len(sketches)
            sketches.append(s3)
        parsed.clear()

    opener = gzip.open if path.endswith(".gz") else open
    n_lines = n_bytes = 0
    try:
        with opener(path, "rb") as fh:
            if start:
                fh.seek(start)
            for lineno, raw_line in enumerate(fh, 1):
                n_lines, n_bytes = lineno, n_bytes + len(raw_line)
                if not raw_line.strip():
                    continue
                # Raw QuickDraw exports glue two objects on some lines (`...}{"word": ...`):
                # each readable object is converted; what cannot be read is a bad line.
                objs, problem = S.json_values(raw_line)
                if len(objs) > 1 or (objs and problem):
                    records.append((lineno, _JOINED))
                if problem is not None:
                    records.append((lineno, _BAD_LINE, "invalid JSON"))
                for obj in objs:
                    if not isinstance(obj, dict) or "drawing" not in obj:
                        records.append((lineno, _BAD_LINE, "no drawing field"))
                    else:
                        name = obj.get("word") if isinstance(obj.get("word"), str) else stem_category
                        key = _category_key(name)
                        if wanted is not None and key not in wanted:
                            records.append((lineno, _FILTERED, key, name))
                        else:
                            key_id = obj.get("key_id")
                            key_id = None if key_id is None else str(key_id)
                            line_fmt = detect_format(obj) if fmt == "auto" else fmt
                            records.append((lineno, _DRAWING, key, name, key_id, line_fmt))
                            try:
                                lines = _parse_drawing(obj["drawing"], line_fmt, max_points)
                            except BadDrawing as e:
                                outcome[len(records) - 1] = e.reason
                            else:
                                parsed.append((len(records) - 1, line_fmt, lines))
                                if len(parsed) >= _RDP_BATCH:
                                    flush()
                if end is not None and start + n_bytes >= end:
                    break
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    flush()
    lengths = np.array([len(s) for s in sketches], dtype=np.int64)
    points = np.concatenate(sketches) if sketches else np.zeros((0, 3), np.int16)
    return {"records": records, "outcome": outcome, "points": points, "lengths": lengths,
            "lines": n_lines, "bytes": n_bytes, "pid": os.getpid(),
            "cpu_s": time.process_time() - cpu0}


def _run_chunk(args: tuple) -> dict:
    return _convert_chunk(*args)


def import_ndjson(sources: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                  fmt: str = "auto", categories: Sequence[str] | None = None,
                  split: tuple[float, float, float] = (0.9, 0.05, 0.05), seed: int = 0,
                  max_points: int = DEFAULT_IMPORT_MAX_POINTS, epsilon: float = 2.0,
                  splits_file: str | os.PathLike | None = "auto", progress: bool = True,
                  processes: int | None = None, chunk_bytes: int | None = None) -> dict:
    """Convert QuickDraw ndjson (simplified, raw or SPG) into one sketch-rnn npz per category.

    `sources`: files or folders of `.ndjson`/`.ndjson.gz`. The category of a line is its `word`,
    else its file's name. Lines are deduplicated by `key_id` within a category (the first line
    that converts wins). Splits come from a
    splits file (`splits_file="auto"` uses a `splits.json` beside the ndjson, `None` uses none),
    otherwise from a seeded split by `split` fractions. Bad lines are dropped and counted.
    Each npz is written atomically, also holds `<split>_key_ids` and a `sketchlab_import` JSON
    string, and `import_report.json` in `out_dir` sums everything up, with the line numbers of
    every dropped line per file (`dropped_lines`) and of the lines that held several JSON objects
    glued together (`joined_lines`, as raw QuickDraw exports have; each object is imported).
    Returns that report.

    `processes` (default: every core this process may use) convert chunks of about
    `chunk_bytes` (default: a 16th of the input per process, 256 KiB to 4 MiB; a gzip file is
    one chunk) in parallel; the chunks are merged
    in file and line order, so the npz files are the same bit for bit whatever the number of
    processes. Imports of less than 2 MiB run in this process.
    """
    t0 = time.perf_counter()
    if fmt not in IMPORT_FORMATS:
        raise ConfigError(f"format must be one of {IMPORT_FORMATS}, not {fmt!r}")
    if len(split) != 3 or any(f < 0 for f in split) or sum(split) <= 0 or split[0] <= 0:
        raise ConfigError(f"split fractions must be 3 non-negative numbers with train > 0, "
                          f"got {split}")
    fractions = tuple(float(f) / sum(split) for f in split)
    if max_points < 2:
        raise ConfigError(f"max_points must be >= 2, got {max_points}")
    if processes is not None and int(processes) < 1:
        raise ConfigError(f"processes must be >= 1, got {processes}")
    if chunk_bytes is not None and int(chunk_bytes) < 1:
        raise ConfigError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
    files = _ndjson_files(sources)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: a file, not a folder; give a folder for the npz files")
    wanted = ({_category_key(c): c for c in parse_categories(categories, "categories")}
              if categories else None)

    split_tables: dict[Path, tuple[str, dict] | None] = {}

    def splits_for(file: Path):
        if splits_file is None:
            return None
        where = Path(splits_file) if splits_file != "auto" else file.parent / "splits.json"
        if where not in split_tables:
            split_tables[where] = ((os.fspath(where), read_splits_file(where))
                                   if where.is_file() or splits_file != "auto" else None)
        return split_tables[where]

    tables = [splits_for(file) for file in files]  # read up front: a bad one fails early
    cats: dict[str, _Category] = {}
    seen_names: dict[str, str] = {}  # key -> name, every category met (also filtered-out ones)
    dropped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    formats: Counter = Counter()
    lines_read = 0
    # Every dropped line by file and reason, and the lines that held several glued objects
    # (each recovered): import_report.json lists their line numbers.
    dropped_lines: dict[str, dict[str, list[int]]] = {}
    joined_lines: dict[str, list[int]] = {}

    def drop(cat: _Category | None, reason: str, where: tuple[str, int]):
        dropped[reason] += 1
        if cat is not None:
            cat.dropped[reason] += 1
        file_name, lineno = where
        numbers = dropped_lines.setdefault(file_name, {}).setdefault(reason, [])
        if not numbers or numbers[-1] != lineno:
            numbers.append(lineno)
        if len(examples.setdefault(reason, [])) < 3:
            examples[reason].append(f"{file_name}:{lineno}")

    total_bytes = sum(f.stat().st_size for f in files)
    explicit_chunks = chunk_bytes is not None
    n_proc = int(processes or default_processes())
    if chunk_bytes is None:
        # About 16 chunks per process (at most 4 MiB each): the last chunks to finish are small,
        # so the processes end together (whole files as chunks left one of two cores idle for
        # up to a file's time).
        chunk_bytes = min(DEFAULT_CHUNK_BYTES, max(_MIN_CHUNK_BYTES, total_bytes // (16 * n_proc)))
    tasks = _plan_tasks(files, int(chunk_bytes))
    n_proc = min(n_proc, len(tasks))
    if total_bytes < _MIN_PARALLEL_BYTES and not explicit_chunks:
        n_proc = 1
    wanted_keys = frozenset(wanted) if wanted is not None else None
    jobs = [(os.fspath(files[k]), a, b, fmt, wanted_keys, _file_category(files[k]), max_points,
             epsilon) for k, a, b in tasks]
    line_base = [0] * len(files)  # lines of each file in the chunks merged so far
    worker_cpu: Counter = Counter()  # CPU seconds spent converting, per process

    def merge(k: int, chunk: dict):
        nonlocal lines_read
        file, table = files[k], tables[k]
        points = np.split(chunk["points"], np.cumsum(chunk["lengths"])[:-1]) if len(chunk["lengths"]) else []
        last_line = None
        for r, rec in enumerate(chunk["records"]):
            if rec[0] != last_line:   # a line may hold several records (glued objects)
                lines_read += 1
                last_line = rec[0]
            where = (os.fspath(file), line_base[k] + rec[0])
            if rec[1] == _JOINED:
                joined_lines.setdefault(where[0], []).append(where[1])
                continue
            if rec[1] == _BAD_LINE:
                drop(None, rec[2], where)
                continue
            key, name = rec[2], rec[3]
            seen_names.setdefault(key, name)
            if rec[1] == _FILTERED:
                continue
            key_id, line_fmt = rec[4], rec[5]
            cat = cats.get(key)
            if cat is None:
                cat = cats[key] = _Category(seen_names[key])
            cat.sources.add(os.fspath(file))
            if key_id is not None and key_id in cat.seen_keys:
                drop(cat, "duplicate key_id", where)
                continue
            given = None
            if table is not None and key in table[1]:
                cat.splits_file = table[0]
                given = table[1][key].get(key_id)
            result = chunk["outcome"][r]
            if isinstance(result, str):
                drop(cat, result, where)
                continue
            formats[line_fmt] += 1
            if key_id is not None:
                cat.seen_keys.add(key_id)
            cat.sketches.append(points[result])
            cat.key_ids.append(key_id or "")
            cat.given.append(given)
        line_base[k] += chunk["lines"]

    bar = Progress(total_bytes, "import", "B", unit_scale=True, enabled=progress)
    try:
        if n_proc <= 1:
            results = map(_run_chunk, jobs)
            pool = None
        else:
            # fork on Linux: a spawned worker would import the caller's __main__ (for the
            # `sketchlab` command: the CLI and torch, seconds per worker). The workers run json
            # and numpy only, never torch, so its thread pools in the parent do not matter.
            # (macOS and Windows spawn: forking is unsafe or missing there.) map() hands the
            # results back in task order.
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            pool = ProcessPoolExecutor(n_proc, mp_context=multiprocessing.get_context(method))
            results = pool.map(_run_chunk, jobs)
        try:
            for (k, a, b), chunk in zip(tasks, results):
                merge(k, chunk)
                worker_cpu[chunk["pid"]] += chunk["cpu_s"]
                bar.update(files[k].stat().st_size if b is None else b - a)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    finally:
        bar.close()

    if wanted is not None:
        unknown = [name for key, name in wanted.items() if key not in seen_names]
        if unknown:
            raise DataError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                            f"{', '.join(unknown)}; the sources hold: "
                            f"{', '.join(sorted(seen_names.values())) or '(none)'}")

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{out_dir}: cannot create the output folder ({e.strerror or e})") \
            from None
    report_cats = {cats[key].name: _write_category(cats[key], out_dir, fractions, seed, epsilon,
                                                   max_points) for key in sorted(cats)}
    report = {
        "sources": [os.fspath(f) for f in files],
        "out": os.fspath(out_dir),
        "formats": dict(formats),
        "lines_read": lines_read,
        "imported": int(sum(len(c.sketches) for c in cats.values())),
        "dropped": dict(dropped),
        "dropped_examples": examples,
        # {file: {reason: [line numbers]}}: every line (or object of a line) left out
        "dropped_lines": {f: {r: sorted(set(n)) for r, n in by.items()}
                          for f, by in dropped_lines.items()},
        # {file: [line numbers]}: lines holding several glued JSON objects (each readable one
        # is imported; a torn one after them is in dropped_lines too)
        "joined_lines": joined_lines,
        "seed": seed, "split_fractions": list(fractions), "epsilon": epsilon,
        "max_points": max_points,
        "categories": report_cats,
        "processes": n_proc,
        # Per process: how evenly the conversion was shared (its wall time, not the CPU
        # time, is what the machine's other jobs change).
        "convert_cpu_seconds": sorted((round(v, 2) for v in worker_cpu.values()), reverse=True),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    with atomic_open(out_dir / "import_report.json", "w") as fh:
        json.dump(report, fh, indent=1)
    return report
