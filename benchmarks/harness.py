"""What the benchmark scripts share: where the project and its results are, the machine's
name, the timers (medians of repeated, optionally interleaved calls), the results JSON and
the generated sections of docs/benchmarks.md, and two model helpers used by more than one
benchmark.

The scripts are run as `python benchmarks/NAME.py`, which puts this folder on sys.path, so
they `import harness`; tests import them the same way (tests/test_benchmark_camvid.py). The
module needs only the standard library; torch is imported by the helpers that take tensors.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

if TYPE_CHECKING:
    import torch

HERE = Path(__file__).resolve().parent  # benchmarks/
ROOT = HERE.parent  # the project
RESULTS_DIR = HERE / "results"
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"
CAMVID_DATA = ROOT.parent / "shared" / "data" / "camvid"  # the data's default place, outside the project

T = TypeVar("T")


# ---------------------------------------------------------------- the scripts


def import_sibling(name: str) -> ModuleType:
    """Another benchmark script as a module (benchmarks/NAME.py), wherever this one was
    started from: this folder is put on sys.path first where it is not there."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module(name)


def add_docs_flags(parser: argparse.ArgumentParser) -> None:
    """--no-docs and --docs-only, of the scripts that write a generated section of
    docs/benchmarks.md (write_generated())."""
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the docs section")
    parser.add_argument("--docs-only", action="store_true", help="rewrite the docs section from the JSON")


def command_line(script: str, *, python: bool = False) -> str:
    """How this run was started, for its results: 'benchmarks/NAME.py ARGS' (NAME: the file
    `script`, a script's `__file__`), with 'python ' before it when `python`."""
    words = [f"benchmarks/{Path(script).name}", *sys.argv[1:]]
    return " ".join(["python", *words] if python else words)


# ---------------------------------------------------------------- the machine


def machine_word() -> str:
    """The platform module's word for the processor (often only the architecture,
    'x86_64'): platform.processor(), else platform.machine()."""
    return platform.processor() or platform.machine()


def cpu_name(*, bf16: bool = False, fallback: str | None = None) -> str:
    """The processor's model name, the 'model name' line of /proc/cpuinfo. Where that does
    not name it (no such line, or no /proc/cpuinfo: not Linux), `fallback`, or machine_word()
    without one. With `bf16`, whether it computes bf16 natively follows in brackets, '(AVX512-BF16)' or
    '(no AVX512-BF16)': timings of the same work differ by it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    found = (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
    name = next(found, None) or (fallback if fallback is not None else machine_word())
    if not bf16:
        return name
    return f"{name} ({'AVX512-BF16' if ' avx512_bf16' in text else 'no AVX512-BF16'})"


# ---------------------------------------------------------------- timing


class Timing(NamedTuple):
    """What timed() measured: the median seconds, every call's seconds, the last result."""

    median: float
    times: list[float]
    result: Any


class Rounds(NamedTuple):
    """What interleaved() measured, per path: the median seconds, every call's seconds, and
    the last result where it was asked to keep them (else empty)."""

    medians: dict[str, float]
    times: dict[str, list[float]]
    results: dict[str, Any]


def clock(fn: Callable[[], T], sync: Callable[[], None] | None = None) -> tuple[float, T]:
    """The seconds one call of `fn` takes, and its result. `sync` (a GPU's
    torch.cuda.synchronize) runs before the clock starts and before it stops, so that the
    time covers the work queued by the call."""
    if sync is not None:
        sync()
    start = time.perf_counter()
    result = fn()
    if sync is not None:
        sync()
    return time.perf_counter() - start, result


def timed(fn: Callable[[], Any], repeats: int, *, warmup: int = 0,
          sync: Callable[[], None] | None = None) -> Timing:
    """`warmup` untimed calls of `fn`, then `repeats` timed ones (clock()): their median."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    result = None
    for _ in range(repeats):
        seconds, result = clock(fn, sync)
        times.append(seconds)
    return Timing(statistics.median(times), times, result)


def interleaved(paths: Mapping[str, Callable[[], Any]], repeats: int, *, warmup: int = 0,
                sync: Callable[[], None] | None = None, keep_results: bool = False) -> Rounds:
    """The paths timed in turn: `warmup` untimed calls of each (path by path), then `repeats`
    rounds in which every path runs once (clock()), so that all see the same machine state
    (a shared machine drifts between seconds); the median of each. `keep_results` keeps
    each path's last result (else they are dropped at once: large outputs cost memory)."""
    for fn in paths.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in paths}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in paths.items():
            seconds, result = clock(fn, sync)
            times[name].append(seconds)
            if keep_results:
                results[name] = result
    return Rounds({name: statistics.median(values) for name, values in times.items()}, times, results)


# ---------------------------------------------------------------- what the scripts write


def write_file(path: Path, text: str) -> None:
    """`text` into `path`, its folder made where missing; written beside it and moved into
    place, so that a reader (or a run in parallel) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """A results JSON: `data` indented by 2, a newline at the end (write_file())."""
    write_file(path, json.dumps(data, indent=2) + "\n")


def made_by(command: str) -> str:
    """The last line of a generated section: the command that measured it (without
    `--no-docs`, which only kept that run from writing the section)."""
    return f"Made by: `{command.replace(' --no-docs', '')}`"


def write_generated(path: Path, section: str, begin: str, end: str, *, append: bool = True) -> None:
    """Put `section` (a generated section: from the line `begin` to the line `end`) in place
    of the one between those markers in `path`. A file without them gets it at its end
    after a blank line where `append`, else is refused (SystemExit); a missing file is
    made: '# Benchmarks' and the section."""
    path = Path(path)
    text = path.read_text() if path.is_file() else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    elif append and begin not in text:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        raise SystemExit(f"{path} lacks the markers {begin} ... {end}")
    write_file(path, text)


# ---------------------------------------------------------------- models


def pad_to(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """`x` zero-padded at the bottom and right to a multiple of `divisor` (smp's models
    require one); crop the logits back to x's size."""
    import torch.nn.functional as F

    return F.pad(x, (0, -x.shape[-1] % divisor, 0, -x.shape[-2] % divisor))


def set_batch_norm_statistics(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Batch-norm statistics of `images` (one train-mode pass of the batch, no gradient), so
    that random weights give activations of realistic scale (fp16 does not overflow); the
    model is left in eval mode. The batch needs two or more images (image pooling's batch norm)."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # the plain average
    model.train()
    with torch.no_grad():
        model(images)
    for module in norms:
        module.momentum = 0.1
    model.eval()
