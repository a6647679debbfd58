"""Progress of long loops (training, evaluation, prediction, CRF fitting), fit for where it
is read: tqdm's bar on a terminal; where stderr is a file or a pipe (`make demo > demo.log`,
a cluster job's output), a plain line every 30 seconds and one at the end, instead of tqdm's
carriage-return frames that a log keeps as one endless line:

    train deeplab_v3plus: 120/1000 it, 1.9 it/s, eta 0:07:43, loss 0.532, lr 9.10e-03

Both offer what the loops use of tqdm: update(n), set_postfix(**values), close(), `with`.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, Protocol, TextIO

LINE_EVERY_S = 30.0


class Progress(Protocol):
    """What a loop calls on its progress display (tqdm's names)."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True,
                    **values: Any) -> Any: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> Any: ...


def progress_bar(total: int | None, *, desc: str, unit: str = "it", initial: int = 0, disable: bool = False,
                 every: float = LINE_EVERY_S, file: TextIO | None = None) -> Progress:
    """tqdm where `file` (default: stderr) is a terminal, a `LineProgress` elsewhere."""
    stream = file if file is not None else sys.stderr
    if is_terminal(stream):
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                    file=stream)
    return LineProgress(total, desc=desc, unit=unit, initial=initial, disable=disable, every=every, file=stream)


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineProgress:
    """One plain line at most every `every` seconds, and one when closed where the count moved
    since the last (a loop that fails before its first step prints none). A line that falls due
    at update() waits for the set_postfix() that usually follows it, so it shows that step's
    values (the loss of the step it counts)."""

    def __init__(self, total: int | None, *, desc: str, unit: str = "it", initial: int = 0,
                 disable: bool = False, every: float = LINE_EVERY_S, file: TextIO | None = None) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.disable, self.every, self.file = disable, every, file
        self.postfix: dict[str, Any] = {}
        self._initial = initial
        self._started = self._last_line = time.monotonic()
        self._due = False
        self._printed: int | None = None  # the count the last line showed
        self._closed = False

    def update(self, n: int = 1) -> None:
        if self.disable or self._closed:
            return
        self._print_due()  # a line due at the last update that no set_postfix followed
        self.n += n
        self._due = time.monotonic() - self._last_line >= self.every

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **values: Any) -> None:
        if self.disable or self._closed:
            return
        self.postfix = {**(ordered_dict or {}), **values}
        self._print_due()

    def close(self) -> None:
        if self.disable or self._closed:
            return
        shown = self._printed if self._printed is not None else self._initial
        self._due = self._due or self.n != shown  # the last count, where it moved since the last line
        self._print_due()
        self._closed = True

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def _print_due(self) -> None:
        if not self._due:
            return
        self._due, self._printed, self._last_line = False, self.n, time.monotonic()
        print(self.line(), file=self.file if self.file is not None else sys.stderr, flush=True)

    def line(self) -> str:
        """"desc: n/total unit, rate unit/s, eta h:mm:ss, key value, ..." (what is known of it)."""
        elapsed = time.monotonic() - self._started
        done = self.n - self._initial
        parts = [f"{self.n}/{self.total} {self.unit}" if self.total is not None else f"{self.n} {self.unit}"]
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.3g} {self.unit}/s")
            if self.total is not None and self.n < self.total:
                parts.append(f"eta {_clock((self.total - self.n) / rate)}")
        parts += [f"{key} {_shown(value)}" for key, value in self.postfix.items()]
        return f"{self.desc}: {', '.join(parts)}"


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
