"""The training log of a run directory: log.csv, and TensorBoard events when it is installed.

Rows are appended as training goes. Each checkpoint records how many rows the log held when it
was written (`rows`), so a run killed later and resumed from that checkpoint first cuts the log
back to those rows: the rows the killed run wrote after its checkpoint are written again by the
resumed run, never twice.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from sketchlab.errors import OutputError
from sketchlab.fileio import atomic_write_text


class RunLog:
    """log.csv (wide: step, epoch, lr, elapsed, train terms, valid_ terms) + optional TensorBoard.

    `keep_rows`: the rows to keep of an existing log (a resumed checkpoint's count; None keeps
    them all); `fresh=True` starts a new log, dropping one left by a run killed before its first
    checkpoint. `rows` counts the data rows in the file."""

    def __init__(self, run_dir: Path, enabled: bool, keep_rows: int | None = None,
                 fresh: bool = False, first_step: int = 0):
        self.path = run_dir / "log.csv"
        self.enabled = enabled
        self.columns: list[str] | None = None
        self.rows = 0
        self.tb = None
        if not enabled:
            return
        if self.path.is_file():
            if fresh:
                self.path.unlink()
            else:
                self.truncate(keep_rows)
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            # purge_step: events of steps the resumed run writes again are dropped
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=first_step + 1)
        except Exception:
            self.tb = None

    def truncate(self, keep_rows: int | None) -> None:
        """Keep the header and the first `keep_rows` complete data rows (None: every complete
        row); a torn last line (a kill during the append) is dropped too."""
        if not self.enabled or not self.path.is_file():
            return
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
            complete = text if text.endswith("\n") else text[:text.rfind("\n") + 1]
            rows = list(csv.reader(io.StringIO(complete)))
        except (OSError, csv.Error):
            rows = []
        header = rows[0] if rows and rows[0] and rows[0][0] == "step" else None
        if header is None:       # not a log this trainer wrote: start a new one
            self.path.unlink()
            self.columns, self.rows = None, 0
            return
        body = [r for r in rows[1:] if len(r) == len(header)]
        if keep_rows is not None:
            body = body[:keep_rows]
        if len(body) != len(rows) - 1 or complete != text:
            out = io.StringIO()
            csv.writer(out).writerows([header, *body])
            atomic_write_text(self.path, out.getvalue())
        self.columns, self.rows = header, len(body)

    def write(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        try:
            if self.columns is None:
                base = ["step", "epoch", "lr", "elapsed"]
                # Train and valid rows report the same terms; whichever comes first names them.
                terms = list(dict.fromkeys(k.removeprefix("valid_") for k in row if k not in base))
                self.columns = base + terms + ["valid_" + t for t in terms]
                with open(self.path, "w", newline="") as fh:
                    csv.writer(fh).writerow(self.columns)
            with open(self.path, "a", newline="") as fh:
                csv.writer(fh).writerow([_fmt(row.get(c)) for c in self.columns])
        except OSError as e:
            raise OutputError(f"{self.path}: cannot write the training log "
                              f"({e.strerror or e})") from None
        self.rows += 1
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and v is not None:
                    self.tb.add_scalar(k.replace("valid_", "valid/") if k.startswith("valid_")
                                       else f"train/{k}", v, int(row["step"]))

    def close(self):
        if self.tb is not None:
            self.tb.close()


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v
