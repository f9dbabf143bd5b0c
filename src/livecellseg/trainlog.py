"""The training log: dvclive curves per batch and per epoch, and the run's summary.

dvclive only appends, so a run resumed from a checkpoint first drops the rows a killed run
logged after that checkpoint: the curves of a resumed run hold each step once, as an
uninterrupted run's do.
"""

from __future__ import annotations

import math
from pathlib import Path

from livecellseg.io import atomic_path
from livecellseg.models import parameter_table

VARYING = (
    "time_s",
    "wall_s",
    "peak_memory_mb",
)  # differ between runs: plotted, kept out of metrics.json


class TrainingLog:
    """dvclive on the main process; a no-op elsewhere (`enabled=False`)."""

    def __init__(self, live_dir: Path, *, resumed: bool, enabled: bool) -> None:
        from dvclive import Live

        self.live_dir = live_dir
        self.live = (
            Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=resumed)
            if enabled
            else None
        )

    def trim(self, *, epoch_step: int, batch_step: int) -> None:
        if self.live is not None:
            trim_live_logs(self.live_dir, epoch_step=epoch_step, batch_step=batch_step)

    def batch(self, step: int, values: dict[str, float]) -> None:
        if self.live is not None:
            self.live.step = step
            for k, v in values.items():
                self.live.log_metric(f"batch/{k}", v)

    def epoch(self, epoch: int, values: dict[str, float]) -> None:
        """One epoch's values (train_*, val_*, lr, time_s, peak_memory_mb), at step `epoch`."""
        if self.live is not None:
            self.live.step = epoch
            for k, v in values.items():
                self.live.log_metric(f"epoch/{k}", v)

    def summary(self, model, **values) -> None:
        """metrics.json: the parameter table, the values given, the last epoch's curves."""
        if self.live is None:
            return
        for k in VARYING:
            self.live.summary.get("epoch", {}).pop(k, None)
        table = parameter_table(model)
        self.live.summary["params"] = {
            f"{c}_{k}": v for c, row in table.items() for k, v in row.items()
        }
        self.live.summary.update(values)
        self.live.make_summary()

    @property
    def written(self) -> dict:
        return self.live.summary if self.live is not None else {}


def trim_live_logs(live_dir: Path, *, epoch_step: int, batch_step: int) -> None:
    """Drop dvclive rows logged after the checkpoint being resumed (dvclive appends)."""
    for tsv in sorted(Path(live_dir, "plots", "metrics").rglob("*.tsv")):
        last = epoch_step if tsv.parent.name == "epoch" else batch_step
        text = tsv.read_text()
        if "\n" not in text:  # created by dvclive just before the kill: no complete row
            tsv.unlink()
            continue
        header, *rows = text.splitlines()
        col = header.split("\t").index("step")
        keep = [r for r in rows if _step_of(r, col, len(header.split("\t"))) <= last]
        trimmed = "\n".join([header, *keep, ""])
        if trimmed != text:
            with atomic_path(tsv) as tmp:
                tmp.write_text(trimmed)


def _step_of(row: str, col: int, n_cols: int) -> float:
    fields = row.split("\t")
    try:  # a row cut short by the kill counts as after the checkpoint
        float(fields[-1])
        return int(fields[col]) if len(fields) == n_cols else math.inf
    except ValueError:
        return math.inf
