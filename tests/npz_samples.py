"""Small sketch-rnn npz files and helpers shared by the data tests (npz, ndjson, sources,
download)."""

import io
import zipfile

import numpy as np

from sketchlab import cli

SK_A = np.array([[5, 3, 0], [10, 0, 0], [0, 10, 1], [-4, 2, 0], [3, 3, 1]], np.int16)
SK_B = np.array([[1, 1, 0], [2, -1, 1]], np.int16)
SK_C = np.array([[0, 0, 0], [7, 7, 0], [1, -7, 0], [2, 2, 1]], np.int16)


def npz_with_members(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name + ".npy", data)
    return path


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def object_array(items):
    out = np.empty(len(items), dtype=object)
    for i, a in enumerate(items):
        out[i] = a
    return out


def standard_npz(path, **splits):
    return npz_with_members(path, {k: npy(object_array(v)) for k, v in splits.items()})


class WritesMarker:
    """A pickle payload: unpickling it calls open(marker, 'w'), which creates the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def run_cli(monkeypatch, capsys, *argv):
    monkeypatch.setattr(cli, "CLI_MODULES", ["sketchlab.cli.data"])
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
