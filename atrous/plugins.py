"""A user's own models, losses and datasets, registered without editing atrous: modules named
by `--import MODULE` (or the ATROUS_IMPORT variable, comma-separated), and every entry point of
the group "atrous.plugins" that an installed package declares, e.g. in its pyproject.toml:

    [project.entry-points."atrous.plugins"]
    my_models = "my_package.segmentation"

Importing such a module runs its @register_model / @register_loss / @register_dataset."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Sequence

from atrous.errors import UserError

ENTRY_POINT_GROUP = "atrous.plugins"
ENVIRONMENT_VARIABLE = "ATROUS_IMPORT"


def modules_named(argv: Sequence[str]) -> list[str]:
    """The MODULEs of `--import MODULE` / `--import=MODULE` in `argv`, and of $ATROUS_IMPORT."""
    names = [n.strip() for n in os.environ.get(ENVIRONMENT_VARIABLE, "").split(",") if n.strip()]
    for index, arg in enumerate(argv):
        if arg == "--import" and index + 1 < len(argv):
            names.append(argv[index + 1])
        elif arg.startswith("--import="):
            names.append(arg.split("=", 1)[1])
    return names


def import_plugins(modules: Sequence[str] = ()) -> list[str]:
    """Imports the installed entry points, then `modules` (the current folder on the path, as
    `python -m` has it). Returns the names imported; a module that fails is one line."""
    imported = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as err:
            raise UserError(f"plugin {entry.name} ({entry.value}) failed to load: {type(err).__name__}: {err}") from err
        imported.append(entry.value)
    if modules and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise UserError(f"imports {name}: {err}", argument="imports") from err
        except Exception as err:
            raise UserError(f"imports {name} failed: {type(err).__name__}: {err}", argument="imports") from err
        imported.append(name)
    return imported
