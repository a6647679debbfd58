"""Where and in what arithmetic a run computes: the device, the precision (fp32, bf16, fp16,
or "auto": the fast one that is native here), autocast, and evaluation mode."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from atrous.errors import UserError

ARITHMETIC = ("fp32", "bf16", "fp16")  # what a run computes in
PRECISIONS = ("auto", *ARITHMETIC)  # what a user may ask for; "auto" resolves to one of ARITHMETIC


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes in bf16 natively (AVX512-BF16 or AMX): autocast to bf16
    is then faster than fp32; elsewhere it is emulated and slower."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return True
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> the fast precision for `device`; the others as they are."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'", argument="precision")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"



def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise UserError(f"device {device}: {err}", argument="device") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device}: CUDA is not available on this machine", argument="device")
    return resolved


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode for the duration; every submodule's own mode restored afterwards
    (the training loop evaluates its model between steps)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 or fp16 autocast on CPU or GPU when asked; fp32 otherwise. (fp16 is for GPUs, with
    a gradient scaler in training; it runs on a CPU too, slowly.)"""
    if precision not in ARITHMETIC:
        raise UserError(f"precision must be one of {', '.join(ARITHMETIC)}, got '{precision}'", argument="precision")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


