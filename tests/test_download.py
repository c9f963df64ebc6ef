"""Download of the official sketch-rnn npz files, against a local HTTP server."""

import hashlib
import io
import json
import threading
import urllib.parse
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from npz_samples import SK_A, WritesMarker, npy, object_array, run_cli
from sketchlab.data.download import download_category, read_checksums
from sketchlab.data.npz import save_sketchrnn_npz
from sketchlab.errors import ConfigError, DataError


# ============================================================================================
# Download (a local HTTP server; never the internet)
# ============================================================================================


class _Server:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate_next: set[str] = set()
        self.honour_range = True
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = urllib.parse.unquote(self.path)
                rng = self.headers.get("Range")
                server.requests.append((path, rng))
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and server.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path in server.truncate_next:  # the connection drops half way
                    server.truncate_next.discard(path)
                    body = body[: len(body) // 2]
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/sketchrnn"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    s = _Server()
    yield s
    s.close()


def _npz_bytes(tmp_path, name="src.npz", n=300):
    rng = np.random.default_rng(0)
    sketches = [np.concatenate([rng.integers(-20, 20, (8, 2)), np.zeros((8, 1), int)], 1)
                .astype(np.int16) for _ in range(n)]
    for s in sketches:
        s[-1, 2] = 1
    save_sketchrnn_npz(tmp_path / name, {"train": sketches, "valid": sketches[:5],
                                            "test": sketches[:5]})
    return (tmp_path / name).read_bytes()


def test_download_verifies_and_records_sha256(server, tmp_path):
    data = _npz_bytes(tmp_path)
    server.files["/sketchrnn/alarm clock.npz"] = data
    out = tmp_path / "dl"
    result = download_category("alarm clock", out, base_url=server.url, progress=False)
    assert server.requests[0] == ("/sketchrnn/alarm clock.npz", None)
    assert result["status"] == "downloaded" and result["bytes"] == len(data)
    assert (out / "alarm clock.npz").read_bytes() == data
    digest = hashlib.sha256(data).hexdigest()
    assert (out / "alarm clock.npz.sha256").read_text() == f"{digest}  alarm clock.npz\n"
    assert not (out / "alarm clock.npz.part").exists()
    # Again: the verified copy is kept, no request made.
    again = download_category("alarm clock", out, base_url=server.url, progress=False)
    assert again["status"] == "present" and len(server.requests) == 1


def test_download_resumes_after_a_truncated_transfer(server, tmp_path, monkeypatch, capsys):
    data = _npz_bytes(tmp_path)
    server.files["/sketchrnn/cat.npz"] = data
    server.truncate_next.add("/sketchrnn/cat.npz")
    out = tmp_path / "dl"
    code, _, err = run_cli(monkeypatch, capsys, "data", "download", "cat", "--out", str(out),
                            "--base-url", server.url, "--quiet")
    assert code == 2 and "incomplete" in err and "resume" in err
    part = out / "cat.npz.part"
    assert part.stat().st_size == len(data) // 2 and not (out / "cat.npz").exists()
    code, out_text, _ = run_cli(monkeypatch, capsys, "data", "download", "cat", "--out", str(out),
                                 "--base-url", server.url, "--quiet")
    assert code == 0 and f"resumed from byte {len(data) // 2}" in out_text
    assert server.requests[-1] == ("/sketchrnn/cat.npz", f"bytes={len(data) // 2}-")
    assert (out / "cat.npz").read_bytes() == data and not part.exists()


def test_download_restarts_when_the_server_ignores_range(server, tmp_path):
    data = _npz_bytes(tmp_path)
    server.files["/sketchrnn/cat.npz"] = data
    server.honour_range = False
    out = tmp_path / "dl"
    out.mkdir()
    (out / "cat.npz.part").write_bytes(b"stale bytes from another file")
    result = download_category("cat", out, base_url=server.url, progress=False)
    assert result["resumed_from"] == 0 and (out / "cat.npz").read_bytes() == data


def test_download_errors(server, tmp_path):
    with pytest.raises(DataError, match=r"unknown category 'catt' .*404.*did you mean 'cat'"):
        download_category("catt", tmp_path, base_url=server.url, progress=False)
    # Unknown names are caught before any request for Google's bucket.
    with pytest.raises(DataError, match=r"unknown category 'alarm_clock'.*'alarm clock'"):
        download_category("alarm_clock", tmp_path, progress=False)
    # Nobody listens on this port.
    dead = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = dead.server_address[1]
    dead.server_close()
    with pytest.raises(DataError, match=rf"could not reach 127.0.0.1:{port}"):
        download_category("cat", tmp_path, base_url=f"http://127.0.0.1:{port}/x",
                             progress=False, timeout=5)
    with pytest.raises(ConfigError, match="base-url"):
        download_category("cat", tmp_path, base_url="ftp:/nowhere", progress=False)


def test_download_checksum_mismatch_and_invalid_file_are_discarded(server, tmp_path, monkeypatch,
                                                                   capsys):
    data = _npz_bytes(tmp_path)
    server.files["/sketchrnn/cat.npz"] = data
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{'0' * 64}  cat.npz\n")
    code, _, err = run_cli(monkeypatch, capsys, "data", "download", "cat", "--out",
                            str(tmp_path / "dl"), "--base-url", server.url, "--quiet",
                            "--checksums", str(sums))
    assert code == 2 and "does not match" in err
    assert not (tmp_path / "dl" / "cat.npz").exists()
    assert not (tmp_path / "dl" / "cat.npz.part").exists()
    sums.write_text(f"{hashlib.sha256(data).hexdigest()} *cat.npz\n")
    code, _, _ = run_cli(monkeypatch, capsys, "data", "download", "cat", "--out",
                          str(tmp_path / "dl"), "--base-url", server.url, "--quiet",
                          "--checksums", str(sums))
    assert code == 0
    # A hostile file from a mirror is refused by the safe loader and never renamed into place.
    marker = tmp_path / "pwned"
    server.files["/sketchrnn/dog.npz"] = _npy_zip_bytes(
        {"train": npy(object_array([WritesMarker(marker)])),
         "valid": npy(object_array([SK_A])), "test": npy(object_array([SK_A]))})
    with pytest.raises(DataError, match="refused"):
        download_category("dog", tmp_path / "dl", base_url=server.url, progress=False)
    assert not marker.exists() and not (tmp_path / "dl" / "dog.npz").exists()


def _npy_zip_bytes(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name + ".npy", data)
    return buf.getvalue()


def test_read_checksums_formats(tmp_path):
    digest = "ab" * 32
    (tmp_path / "a.txt").write_text(f"# comment\n{digest}  alarm clock.npz\n")
    assert read_checksums(tmp_path / "a.txt") == {"alarm clock.npz": digest}
    (tmp_path / "b.json").write_text(json.dumps({"cat": digest.upper()}))
    assert read_checksums(tmp_path / "b.json") == {"cat.npz": digest}
    (tmp_path / "c.txt").write_text("xyz cat.npz\n")
    with pytest.raises(DataError, match="valid sha256"):
        read_checksums(tmp_path / "c.txt")


def test_cli_download_continues_after_one_failure(server, tmp_path, monkeypatch, capsys):
    server.files["/sketchrnn/cat.npz"] = _npz_bytes(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, "data", "download", "emu", "cat", "--out",
                              str(tmp_path / "dl"), "--base-url", server.url, "--quiet")
    assert code == 2 and "emu: error: unknown category 'emu'" in err
    assert "1 of 2 downloads failed: emu" in err
    assert (tmp_path / "dl" / "cat.npz").is_file() and "cat.npz" in out
