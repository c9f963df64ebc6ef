"""`sketchlab data import | download | info`: thin command-line entry points over
`sketchlab.data.ndjson`, `.download` and `.catalog`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sketchlab.data.catalog import describe_npz
from sketchlab.data.download import (DEFAULT_BASE_URL, check_official_category, download_category,
                                     read_checksums)
from sketchlab.data.ndjson import DEFAULT_IMPORT_MAX_POINTS, IMPORT_FORMATS, import_ndjson
from sketchlab.data.sources import category_filename, expand_paths, parse_categories
from sketchlab.errors import DataError

_IMPORT_EPILOG = """\
examples:
  sketchlab data import ../shared/data/spg20 --out data/spg20
      SPG ndjson + its splits.json; the withheld test split is carved out of train (seeded)
  sketchlab data import full_raw_cat.ndjson dog.ndjson --out data/qd --categories cat,dog
  sketchlab data import simplified/ --out data/qd --split 0.8,0.1,0.1 --seed 1

Formats (auto-detected per line, or --format): Google's simplified ndjson ([xs, ys] per stroke,
already aligned, scaled and RDP'd: only made relative); raw ndjson ([xs, ys, ts]: aligned to the
top-left, longest side scaled to 255, RDP epsilon 2; timestamps are ignored, the array order is the
drawing order); SPG ndjson ([xs, ys, part_ids], dense 0..255 points: RDP epsilon 2).
Bad lines (empty drawings, single points, NaN, xs/ys of different lengths, more than --max-points
points after simplification, duplicate key_ids) are dropped and counted, never fatal.
Writes one <category>.npz (sketch-rnn layout: train/valid/test object arrays of int16 stroke-3,
plus <split>_key_ids and a sketchlab_import provenance string) and import_report.json.
"""

_DOWNLOAD_EPILOG = """\
examples:
  sketchlab data download cat "alarm clock" --out data/qd
  sketchlab data download cat --out data/qd --checksums SHA256SUMS
  sketchlab data download cat --out data/qd --base-url http://mirror.local/sketchrnn

Each file goes to <cat>.npz.part first and is resumed from there (HTTP Range) if interrupted;
run the same command again to continue. A finished file must match Content-Length (and the
--checksums entry when given) and open as a sketch-rnn npz; its sha256 is written to
<cat>.npz.sha256 (`sha256sum -c` format).
"""

_INFO_EPILOG = """\
examples:
  sketchlab data info data/spg20
  sketchlab data info ../shared/data/sketchrnn/aaron_sheep.npz --json

Lengths are points per sketch (stroke-3 rows); strokes are pen lifts per sketch. The scale
factor is the std of the pooled dx, dy of the train split after clipping to +-1000: what the
trainer divides offsets by.
"""


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VALID,TEST fractions, got {text!r}")
    return parts  # type: ignore[return-value]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) or r[i] == "-" for r in cells[1:]) for i in range(len(headers))]
    for n, r in enumerate(cells):
        print("  ".join(c.rjust(w) if num else c.ljust(w)
                        for c, w, num in zip(r, widths, numeric)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


# --------------------------------------------------------------------------------------------


def _cmd_import(args) -> int:
    categories = parse_categories(args.categories) or None
    splits_file = None if args.splits == "none" else args.splits
    report = import_ndjson(args.sources, args.out, fmt=args.format, categories=categories,
                              split=args.split, seed=args.seed, max_points=args.max_points,
                              epsilon=args.epsilon, splits_file=splits_file,
                              progress=not args.quiet, processes=args.processes)
    rows = []
    for name, c in report["categories"].items():
        if c.get("file") is None:
            rows.append([name, 0, 0, 0, "-", "-", sum(c["dropped"].values())])
            continue
        rows.append([name, c["train"], c["valid"], c["test"], c["mean_length"], c["max_length"],
                     sum(c["dropped"].values())])
    _print_table(["category", "train", "valid", "test", "mean len", "max len", "dropped"], rows)
    print(f"\n{report['imported']} sketches imported from {report['lines_read']} lines "
          f"({', '.join(f'{k}: {v}' for k, v in report['formats'].items()) or 'none'}) "
          f"in {report['seconds']} s ({report['processes']} processes)")
    if report["dropped"]:
        print("dropped: " + ", ".join(f"{k}: {v}" for k, v in sorted(report["dropped"].items()))
              + " (file and line of each: dropped_lines in import_report.json)")
    carved = {n: c["test_carved_from_train"] for n, c in report["categories"].items()
              if c.get("test_carved_from_train")}
    if carved:
        sources = sorted({report["categories"][n]["split_source"] for n in carved})
        low, high = min(carved.values()), max(carved.values())
        sizes = str(low) if low == high else f"{low}-{high}"
        print(f"note: {', '.join(sources)} gives no test split (e.g. SPG withholds it): a seeded "
              f"test split (seed {report['seed']}) was carved out of train for {len(carved)} "
              f"categor{'y' if len(carved) == 1 else 'ies'} ({sizes} sketches each); recorded "
              f"in each npz and the report.")
    print(f"wrote {len([c for c in report['categories'].values() if c.get('file')])} npz files and "
          f"{os.path.join(report['out'], 'import_report.json')}")
    return 0


def _cmd_download(args) -> int:
    checksums = read_checksums(args.checksums) if args.checksums else {}
    if args.base_url == DEFAULT_BASE_URL:  # catch misspellings before any network traffic
        for cat in args.categories:
            check_official_category(cat)
    failures = []
    for cat in args.categories:
        expected = None
        if checksums:
            expected = checksums.get(category_filename(cat))
            if expected is None:
                raise DataError(f"{args.checksums}: no checksum for {category_filename(cat)}")
        try:
            result = download_category(cat, args.out, base_url=args.base_url,
                                          expected_sha256=expected, force=args.force,
                                          timeout=args.timeout, progress=not args.quiet)
        except DataError as e:
            if len(args.categories) == 1:
                raise
            print(f"sketchlab data download: {cat}: error: {e}", file=sys.stderr)
            failures.append(cat)
            continue
        how = {"present": "already present, checksum ok", "downloaded": "downloaded",
               "resumed": f"resumed from byte {result['resumed_from']}"}[result["status"]]
        print(f"{result['path']}: {result['bytes']} bytes, sha256 {result['sha256'][:16]}... "
              f"({how})")
    if failures:
        raise DataError(f"{len(failures)} of {len(args.categories)} downloads failed: "
                        f"{', '.join(failures)}; run the command again to resume")
    return 0


def _info_paths(paths: list[str]) -> list[Path]:
    return expand_paths(paths, (".npz",), ".npz")


def _cmd_info(args) -> int:
    on_bad = "drop" if args.drop_bad else "raise"
    infos = [describe_npz(f, on_bad=on_bad) for f in _info_paths(args.paths)]
    if args.json:
        json.dump(infos if len(infos) > 1 else infos[0], sys.stdout, indent=1)
        print()
        return 0
    rows = []
    for info in infos:
        name = Path(info["path"]).name
        for split, s in info["splits"].items():
            if s["count"] == 0:
                rows.append([name, split, 0] + ["-"] * 7)
                continue
            L, K = s["length"], s["strokes"]
            rows.append([name, split, s["count"], L["mean"], L["p50"], L["p90"], L["p99"],
                         L["max"], K["mean"], K["max"]])
            name = ""
    _print_table(["file", "split", "sketches", "len mean", "p50", "p90", "p99", "max",
                  "strokes", "max"], rows)
    print()
    for info in infos:
        line = f"{Path(info['path']).name}: {info['format']}"
        if info.get("scale_factor") is not None:
            line += f", scale factor {info['scale_factor']}"
        if info.get("dropped"):
            line += f", dropped {info['dropped']}"
        prov = info.get("provenance")
        if prov and prov.get("test_carved_from_train"):
            line += f", test split carved from train ({prov['test_carved_from_train']} sketches)"
        print(line)
    return 0


# --------------------------------------------------------------------------------------------


def register_cli(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    data = subparsers.add_parser(
        "data", help="import, download and inspect sketch data",
        description="Import QuickDraw ndjson into sketch-rnn npz files, download the official "
                    "npz files, and show what a data file holds.",
        formatter_class=fmt,
        epilog="examples:\n  sketchlab data import ../shared/data/spg20 --out data/spg20\n"
               "  sketchlab data download cat --out data/qd\n  sketchlab data info data/spg20")
    data.set_defaults(func=lambda args: (data.print_help(), 1)[1])
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    p = sub.add_parser("import", help="QuickDraw/SPG ndjson -> one sketch-rnn npz per category",
                       description="Convert QuickDraw ndjson (simplified, raw or SPG) into "
                                   "sketch-rnn npz files, one per category.",
                       formatter_class=fmt, epilog=_IMPORT_EPILOG)
    p.add_argument("sources", nargs="+", metavar="SRC",
                   help="ndjson files (.ndjson or .ndjson.gz) or folders of them")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--format", default="auto", choices=IMPORT_FORMATS,
                   help="input flavour (default: detected per line)")
    p.add_argument("--categories", metavar="A,B", help="import only these categories")
    p.add_argument("--split", type=_fractions, default=(0.9, 0.05, 0.05), metavar="TR,VA,TE",
                   help="fractions for a seeded split where no splits file names one "
                        "(default 0.9,0.05,0.05)")
    p.add_argument("--splits", default="auto", metavar="FILE|auto|none",
                   help="splits file {category: {split: [key_id, ...]}}; 'auto' (default) uses a "
                        "splits.json beside the ndjson files, 'none' ignores it")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument("--max-points", type=int, default=DEFAULT_IMPORT_MAX_POINTS,
                   help="drop drawings with more points after simplification (default %(default)s)")
    p.add_argument("--epsilon", type=float, default=2.0,
                   help="RDP tolerance for raw and SPG input (default 2, as Google's data)")
    p.add_argument("--processes", "-j", type=int, default=None,
                   help="worker processes (default: every core; the output is the same bit for "
                        "bit with any number)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser("download", help="fetch official QuickDraw sketch-rnn npz files",
                       description="Download the official per-category sketch-rnn npz files "
                                   f"from {DEFAULT_BASE_URL}.",
                       formatter_class=fmt, epilog=_DOWNLOAD_EPILOG)
    p.add_argument("categories", nargs="+", metavar="CAT",
                   help="category names as Google spells them (quote names with spaces)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL, metavar="URL",
                   help="where <CAT>.npz lives (default: Google's public bucket)")
    p.add_argument("--checksums", metavar="FILE",
                   help="sha256sum-style file (or JSON {name: sha256}) to verify against")
    p.add_argument("--force", action="store_true", help="download even if a verified copy exists")
    p.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("info", help="counts, lengths and scale factor of npz files",
                       description="Show per-split counts, length percentiles, strokes per "
                                   "sketch and the train scale factor of sketch npz files.",
                       formatter_class=fmt, epilog=_INFO_EPILOG)
    p.add_argument("paths", nargs="+", metavar="PATH", help=".npz files or folders of them")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--drop-bad", action="store_true",
                   help="skip (and count) empty/NaN/over-long sketches instead of failing")
    p.set_defaults(func=_cmd_info)
