"""Training curves (`atrous plot RUN...`): the log.jsonl of one training run, or of several
overlaid, as one subplot per logged quantity against the iteration ("step"), one line per run.

log.jsonl holds one JSON object per line: epoch lines `{"epoch", "step", "loss", "lr",
"elapsed_s"}`, evaluation lines `{"step", "<split>_mIoU", "<split>_pixel_accuracy", ...}`, and
end lines `{"event": "finished"|"stopped", ...}`. Every numeric key but step, epoch and
elapsed_s is a quantity, so keys the trainer adds later are drawn too: the training ones
first (loss, lr, ...), then the evaluation ones grouped by split (the text before the first
"_": val_mIoU, val_pixel_accuracy, test_mIoU, ...). A line that is not valid JSON (a run
killed mid-write leaves a torn last line) is skipped. Reading needs nothing beyond the
standard library; drawing needs matplotlib (atrous.inference.plots)."""

from __future__ import annotations

import fnmatch
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from atrous.errors import UserError
from atrous.inference.plots import new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NOT_QUANTITIES = ("step", "epoch", "elapsed_s")
TITLES = {"loss": "training loss (loss)", "lr": "learning rate (lr)"}


class UnknownQuantity(UserError):
    """A quantity asked for that no log holds."""


@dataclass
class RunLog:
    """One run's curves: quantity -> (steps, values), in the order the quantities are drawn."""

    folder: str
    label: str
    series: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    training: list[str] = field(default_factory=list)  # the quantities of the epoch lines
    skipped_lines: int = 0


def read_run(folder: str, label: str | None = None) -> RunLog:
    """The curves in `folder`/log.jsonl. A missing folder, or one without log.jsonl or without
    any numeric record in it, is a UserError naming the folder."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: no such run folder")
    path = os.path.join(folder, "log.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"{folder} holds no log.jsonl: not the output folder of atrous train")
    run = RunLog(folder, label or run_label(folder))
    training: dict[str, list[tuple[int, float]]] = {}
    evaluation: dict[str, list[tuple[int, float]]] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            record = _record(line)
            if record is None:
                run.skipped_lines += bool(line.strip())
                continue
            if "event" in record or not _is_number(record.get("step")):
                continue
            into = training if "epoch" in record else evaluation
            for key, value in record.items():
                if key not in NOT_QUANTITIES and _is_number(value):
                    into.setdefault(key, []).append((int(record["step"]), float(value)))
    for key in dict.fromkeys([*training, *_grouped_by_split(list(evaluation))]):
        points = sorted(training.get(key, []) + evaluation.get(key, []), key=lambda p: p[0])
        run.series[key] = ([p[0] for p in points], [p[1] for p in points])
    run.training = list(training)
    if not run.series:
        raise UserError(f"{path} holds no training records yet")
    return run


def _record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _grouped_by_split(keys: Sequence[str]) -> list[str]:
    """Evaluation keys grouped by their split prefix (val_..., test_...), each group in the
    order first seen, the groups in the order their first key was seen."""
    splits: dict[str, list[str]] = {}
    for key in keys:
        splits.setdefault(key.split("_", 1)[0], []).append(key)
    return [key for group in splits.values() for key in group]


def run_label(folder: str) -> str:
    """The run folder's name (the current folder's name for ".")."""
    return os.path.basename(os.path.normpath(os.path.abspath(folder)))


def read_runs(folders: Sequence[str]) -> list[RunLog]:
    """Each folder's curves, labelled by the folder's name; where two names are the same, by
    the paths as given."""
    labels = [run_label(f) for f in folders]
    if len(set(labels)) < len(labels):
        labels = [os.path.normpath(f) for f in folders]
    return [read_run(folder, label) for folder, label in zip(folders, labels, strict=True)]


def quantities(runs: Sequence[RunLog], patterns: Sequence[str] | None = None) -> list[str]:
    """The quantities to draw: every one of the runs (the training ones, then the evaluation
    ones grouped by split, each in the order first seen), or those matching `patterns` (names
    or shell patterns such as "val_*"), in that order. A pattern that matches nothing is an
    UnknownQuantity error listing the quantities logged."""
    seen = list(dict.fromkeys(key for run in runs for key in run.series))
    training = {key for run in runs for key in run.training}
    found = [key for key in seen if key in training] + _grouped_by_split([k for k in seen if k not in training])
    if not patterns:
        return found
    chosen: list[str] = []
    for pattern in patterns:
        matches = [key for key in found if fnmatch.fnmatchcase(key, pattern)]
        if not matches:
            raise UnknownQuantity(f"no logged quantity matches '{pattern}'; the logs hold: {', '.join(found)}")
        chosen += [key for key in matches if key not in chosen]
    return chosen


def curves_figure(runs: Sequence[RunLog], keys: Sequence[str]) -> Figure:
    """One subplot per quantity (x: iteration), one line per run in the same colour in every
    subplot, a marker on each point of short curves (a single point shows), one legend."""
    columns = 1 if len(keys) == 1 else 2 if len(keys) in (2, 4) else 3
    rows = math.ceil(len(keys) / columns)
    figure = new_figure(4.6 * columns, 3.1 * rows + 0.5)
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    colours = [f"C{i % 10}" for i in range(len(runs))]
    first = None
    for position, key in enumerate(keys, start=1):
        axes = figure.add_subplot(rows, columns, position, sharex=first)
        first = first or axes
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        for run, colour in zip(runs, colours, strict=True):
            steps, values = run.series.get(key, ([], []))
            if steps:
                axes.plot(steps, values, color=colour, label=run.label, linewidth=1.5,
                          marker="o" if len(steps) <= 30 else None, markersize=5 if len(steps) == 1 else 3)
        axes.set_title(TITLES.get(key, key), fontsize=10)
        axes.grid(True, alpha=0.3)
        axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
        if position > len(keys) - columns:
            axes.set_xlabel("iteration")
    handles = [Line2D([], [], color=colour, linewidth=1.5, marker="o", markersize=4, label=run.label)
               for run, colour in zip(runs, colours, strict=True)]
    figure.legend(handles=handles, loc="outside upper center", ncol=min(len(runs), 4), frameon=False)
    return figure


def plot_curves(folders: Sequence[str], out: str | None = None, metrics: Sequence[str] | None = None) -> Figure:
    """The curves of the runs in `folders` (one or several, overlaid), written to `out`
    (.png or .svg) when given; returns the matplotlib Figure (one axes per quantity)."""
    runs = read_runs(folders)
    figure = curves_figure(runs, quantities(runs, metrics))
    if out is not None:
        save_figure(figure, out)
    return figure
