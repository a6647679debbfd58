"""The bodies of the command-line commands, one module each. Every module declares its options
as a dataclass (`Options`, see atrous.options), a one-line `HELP`, and `run(options)`, which
takes a typed, checked instance of it: cli.py only parses the command line into one."""

import importlib
from types import ModuleType

# command name -> module of this package
COMMANDS = {
    "models": "models",
    "train": "train",
    "eval": "eval",
    "predict": "predict",
    "export": "export",
    "fit-crf": "fit_crf",
    "serve": "serve",
    "demo": "demo",
    "plot": "plot",
    "data": "data",
}


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{COMMANDS[name]}")
