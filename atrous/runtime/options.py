"""The device option every command that runs a model shares, declared once (a group to mix
in, and the field itself for a frozen dataclass, which cannot inherit a group)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atrous.options import option


def device_option() -> Any:
    return option(None, "auto, cpu, cuda, cuda:1, ...")


@dataclass(kw_only=True)
class DeviceOptions:
    device: str | None = device_option()
