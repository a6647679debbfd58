"""Writing outputs safely: atomic replacement (a kill mid-write never leaves a half-written
file behind), .npy streams, and output folders checked before any work starts."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator

from atrous.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path beside `path`; on success it is fsynced and renamed over
    `path` in one step, on failure removed. Readers see the old file or the new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(handle)
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """Calls `write(tmp_path)` and moves the result to `path` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_json_atomic(path: str, data: object) -> None:
    """JSON with NaN written as null (strict JSON has no NaN)."""
    import json
    import math

    def clean(value: object) -> object:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    write_text_atomic(path, json.dumps(clean(data), indent=2))


def write_text_atomic(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as handle:
            handle.write(text)

    write_atomic(path, write)


@contextlib.contextmanager
def npy_stream(path: str) -> Iterator[Callable[[object], None]]:
    """Yields `append(array)`: arrays of one shape and dtype, stacked along a new first axis
    into the .npy file `path` when the block ends (atomically; nothing on failure). Memory
    holds one array at a time: the data waits in a temporary file beside `path`."""
    import shutil

    import numpy as np

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    layout: dict[str, object] = {}
    with tempfile.TemporaryFile(dir=folder) as raw:

        def append(array: object) -> None:
            array = np.ascontiguousarray(array)
            if not layout:
                layout.update(shape=array.shape, dtype=array.dtype, count=0)
            elif (array.shape, array.dtype) != (layout["shape"], layout["dtype"]):
                raise ValueError(f"{path}: array {array.shape} {array.dtype} does not stack on "
                                 f"{layout['shape']} {layout['dtype']}")
            raw.write(array.tobytes())
            layout["count"] += 1

        yield append
        if not layout:
            return
        raw.seek(0)
        header = {"descr": np.lib.format.dtype_to_descr(layout["dtype"]), "fortran_order": False,
                  "shape": (layout["count"], *layout["shape"])}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as out:
                np.lib.format.write_array_header_2_0(out, header)
                shutil.copyfileobj(raw, out, 1 << 24)

        write_atomic(path, write)


def require_writable_folder(folder: str, option: str, *, named: str | None = None, keep: bool = False) -> None:
    """Refuses, in one line naming `option` (and `named`, the path the user gave, where the
    folder is that path's parent), a folder that cannot be created or written, before any
    work starts. Leaves nothing behind: folders it had to make to try are removed again,
    unless `keep` (a run that writes there next: no window in which it is gone again)."""
    shown = named or folder
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{option} {shown} cannot be written: {existing} is a file, not a folder", argument=option)
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"{option} {shown} cannot be written: {err.strerror or err}", argument=option) from err
    finally:
        made = os.path.abspath(folder)
        while not keep and made != existing and os.path.isdir(made) and not os.listdir(made):
            os.rmdir(made)
            made = os.path.dirname(made)


def require_writable_file(path: str, option: str) -> None:
    """The folder that will hold the file `path` must be writable (see require_writable_folder)."""
    if os.path.isdir(path):
        raise UserError(f"{option} {path} is a folder; give a file name", argument=option)
    require_writable_folder(os.path.dirname(os.path.abspath(path)), option, named=path)
