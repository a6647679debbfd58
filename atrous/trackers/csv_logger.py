"""`--log csv`: every scalar as a row `step,name,value` of `metrics.csv` in the run folder (or
--log-dir), one long table that any spreadsheet or pandas pivots. On resume, rows after the
resumed step are dropped, as log.jsonl's lines are."""

from __future__ import annotations

import csv
import os

from atrous.outputs import write_text_atomic
from atrous.trackers.base import RunInfo, Tracker, register_tracker

FILE = "metrics.csv"
HEADER = ["step", "name", "value"]


class CsvTracker(Tracker):
    def __init__(self, path: str, resume_step: int) -> None:
        self.path = path
        if resume_step and os.path.isfile(path):
            _keep_until(path, resume_step)
        else:
            write_text_atomic(path, ",".join(HEADER) + "\n")

    def scalars(self, values: dict[str, float], step: int) -> None:
        with open(self.path, "a", newline="") as handle:
            writer = csv.writer(handle)
            for name, value in values.items():
                writer.writerow([step, name, repr(float(value))])


def _keep_until(path: str, step: int) -> None:
    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle) if len(row) == 3]
    kept = [HEADER] + [row for row in rows[1:] if row[0].isdigit() and int(row[0]) <= step]
    write_text_atomic(path, "".join(",".join(row) + "\n" for row in kept))


@register_tracker("csv")
def open_csv(run: RunInfo) -> CsvTracker:
    folder = run.log_dir or run.out
    os.makedirs(folder, exist_ok=True)
    return CsvTracker(os.path.join(folder, FILE), run.resume_step)
