"""The training log of a run directory: log.csv, and TensorBoard events when it is installed."""

from __future__ import annotations

import csv
from pathlib import Path


class RunLog:
    """log.csv (wide: step, epoch, lr, elapsed, train terms, valid_ terms) + optional TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.path = run_dir / "log.csv"
        self.enabled = enabled
        self.columns: list[str] | None = None
        self.tb = None
        if not enabled:
            return
        if self.path.is_file():
            with open(self.path, newline="") as fh:
                header = next(csv.reader(fh), None)
            self.columns = header or None
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self.tb = SummaryWriter(str(run_dir / "tb"))
        except Exception:
            self.tb = None

    def write(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.columns is None:
            base = ["step", "epoch", "lr", "elapsed"]
            # Train and valid rows report the same terms; whichever comes first names them.
            terms = list(dict.fromkeys(k.removeprefix("valid_") for k in row if k not in base))
            self.columns = base + terms + ["valid_" + t for t in terms]
            with open(self.path, "w", newline="") as fh:
                csv.writer(fh).writerow(self.columns)
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([_fmt(row.get(c)) for c in self.columns])
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
