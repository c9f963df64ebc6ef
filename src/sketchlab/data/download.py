"""Download of the official sketch-rnn npz files (`sketchlab data download`).

Google publishes one `<category>.npz` per QuickDraw category. A download resumes where it stopped
(HTTP Range on a `.part` file), must match Content-Length and, when given, a sha256, and must open
through the safe npz reader before it replaces anything; its sha256 is recorded beside it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


from sketchlab.data.npz import SPLITS, load_npz
from sketchlab.data.quickdraw_categories import QUICKDRAW_CATEGORIES
from sketchlab.data.sources import category_filename
from sketchlab.errors import ConfigError, DataError
from sketchlab.fileio import atomic_open
from sketchlab.progress import Progress

DEFAULT_BASE_URL = "https://storage.googleapis.com/quickdraw_dataset/sketchrnn"


def category_url(category: str, base_url: str = DEFAULT_BASE_URL) -> str:
    return base_url.rstrip("/") + "/" + urllib.parse.quote(category) + ".npz"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_checksums(path: str | os.PathLike) -> dict[str, str]:
    """`sha256sum` output (`HEX  name` per line) or a JSON `{name: hex}` -> `{name: hex}`.

    Names are file names (`cat.npz`); a bare category name is accepted too.
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read checksums ({e})") from None
    table: dict[str, str] = {}
    if text.lstrip().startswith("{"):
        try:
            items = json.loads(text).items()
        except RecursionError:
            raise DataError(f"{path}: invalid JSON (nested too deeply)") from None
        except (ValueError, AttributeError) as e:   # AttributeError: valid JSON, not an object
            raise DataError(f"{path}: invalid JSON checksums ({e})") from None
    else:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.strip().split(None, 1)
            if len(parts) != 2:
                raise DataError(f"{path}:{n}: expected 'SHA256  NAME', got {line!r}")
            items.append((parts[1].lstrip("*"), parts[0]))
    for name, digest in items:
        digest = str(digest).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise DataError(f"{path}: {name!r} has no valid sha256 ({digest!r})")
        name = os.path.basename(str(name))
        table[name if name.endswith(".npz") else name + ".npz"] = digest
    return table


def _unknown_category_message(category: str, why: str) -> str:
    close = difflib.get_close_matches(category.replace("_", " "), QUICKDRAW_CATEGORIES, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown category {category!r} ({why}){hint}"


def check_official_category(category: str) -> None:
    """DataError (with the closest names) unless `category` is one of the 345 QuickDraw names."""
    if category not in QUICKDRAW_CATEGORIES:
        raise DataError(_unknown_category_message(
            category, "not one of the 345 Quick, Draw! categories"))


def _is_sketchrnn_npz(path: Path) -> bool:
    try:
        load_npz(path, SPLITS, on_bad="drop")
        return True
    except DataError:
        return False


def _write_sidecar(sidecar: Path, digest: str, name: str) -> None:
    with atomic_open(sidecar, "w") as fh:
        fh.write(f"{digest}  {name}\n")


def _check_base_url(base_url: str) -> str:
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--base-url must be an http:// or https:// URL, got {base_url!r}")
    return parts.netloc


def download_category(category: str, out_dir: str | os.PathLike, *,
                      base_url: str = DEFAULT_BASE_URL, expected_sha256: str | None = None,
                      force: bool = False, timeout: float = 60.0, progress: bool = True,
                      chunk_size: int = 1 << 20) -> dict:
    """Fetch `<base_url>/<category>.npz` into `out_dir`, resuming a previous partial download.

    Bytes go to `<cat>.npz.part` (an HTTP Range request continues it); once complete the file must
    match Content-Length, `expected_sha256` if given, and open as a sketch-rnn npz through the
    safe loader; then it is renamed into place and its sha256 written to `<cat>.npz.sha256`
    (`sha256sum -c` format). An existing file that matches its recorded checksum is kept.
    Returns `{"category", "path", "sha256", "bytes", "resumed_from", "status"}`.
    """
    host = _check_base_url(base_url)
    if base_url == DEFAULT_BASE_URL:  # no request for a name Google does not have
        check_official_category(category)
    url = category_url(category, base_url)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / category_filename(category)
    part = final.with_name(final.name + ".part")
    sidecar = final.with_name(final.name + ".sha256")

    if final.is_file() and not force:
        # Keep a file that matches the expected or recorded checksum (or, with neither, that opens).
        digest = sha256_file(final)
        recorded = sidecar.read_text().split()[0] if sidecar.is_file() else None
        wanted = (expected_sha256 or "").lower() or recorded
        keep = digest == wanted if wanted else _is_sketchrnn_npz(final)
        if keep:
            if not recorded:
                _write_sidecar(sidecar, digest, final.name)
            return {"category": category, "path": os.fspath(final), "sha256": digest,
                    "bytes": final.stat().st_size, "resumed_from": 0, "status": "present"}

    start = part.stat().st_size if part.is_file() else 0
    for attempt in range(2):  # a second try only after a stale .part was thrown away (HTTP 416)
        request = urllib.request.Request(url, headers={"User-Agent": "sketchlab"})
        if start:
            request.add_header("Range", f"bytes={start}-")
        try:
            # A fresh opener per call: proxy settings are read from the environment now.
            response = urllib.request.build_opener().open(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                why = f"{url} returned 404 Not Found"
                raise DataError(_unknown_category_message(category, why)) from None
            if e.code == 416 and start and attempt == 0:
                part.unlink()
                start = 0
                continue
            raise DataError(f"{url}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise DataError(f"could not reach {host} to download {category!r} ({e.reason}); "
                            f"check the network connection or --base-url") from None
        except (socket.timeout, TimeoutError, ConnectionError) as e:
            raise DataError(f"could not reach {host} to download {category!r} ({e}); "
                            f"check the network connection or --base-url") from None
        break

    with response:
        if start and response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {start}-"):
                raise DataError(f"{url}: server answered the range request for bytes {start}- "
                                f"with Content-Range {content_range!r}; delete {part} and retry")
            size_text = content_range.rsplit("/", 1)[1]
            total = None if size_text == "*" else int(size_text)
        else:
            start = 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        resumed_from = start
        bar = Progress(total, category, "B", unit_scale=True, initial=start, enabled=progress)
        try:
            with open(part, "ab" if start else "wb") as fh:
                while block := response.read(chunk_size):
                    fh.write(block)
                    bar.update(len(block))
                fh.flush()
                os.fsync(fh.fileno())
        except (OSError, socket.timeout, ConnectionError) as e:
            raise DataError(f"download of {category!r} from {host} was interrupted after "
                            f"{part.stat().st_size} bytes ({e}); run the command again to "
                            f"resume") from None
        except Exception as e:  # http.client.IncompleteRead and friends
            raise DataError(f"download of {category!r} from {host} was interrupted after "
                            f"{part.stat().st_size} bytes ({type(e).__name__}); run the command "
                            f"again to resume") from None
        finally:
            bar.close()

    size = part.stat().st_size
    if total is not None and size != total:
        if size > total:
            part.unlink()
        raise DataError(f"download of {category!r} is incomplete: {size} of {total} bytes "
                        f"arrived; run the command again to resume")
    digest = sha256_file(part)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        part.unlink()
        raise DataError(f"{url}: sha256 {digest} does not match the expected {expected_sha256}; "
                        f"the download was discarded")
    try:
        load_npz(part, SPLITS, on_bad="drop")  # structure only: odd sketches are the loader's job
    except DataError as e:
        part.unlink()
        raise DataError(f"{url} did not deliver a valid sketch-rnn npz ({e}); discarded") from None
    os.replace(part, final)
    _write_sidecar(sidecar, digest, final.name)
    return {"category": category, "path": os.fspath(final), "sha256": digest, "bytes": size,
            "resumed_from": resumed_from, "status": "resumed" if resumed_from else "downloaded"}
