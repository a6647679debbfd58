"""Command line: argument parsing only. Each command's flags come from its options dataclass
(atrous.commands.<command>.Options, declared with atrous.options); its body is that module's
`run`, given a typed, checked instance.

    atrous models [NAME]
    atrous train --model NAME --dataset NAME --out DIR [options]
    atrous eval --checkpoint FILE --dataset NAME [--crf none|dense|conv] [--json FILE]
    atrous predict --checkpoint FILE INPUT... --out DIR [--crf ...] [--batch-size B] [--save logits|probs]
    atrous export --checkpoint FILE --out FILE [--int8 --calibrate-dataset NAME]
    atrous fit-crf --checkpoint FILE --dataset NAME [--crf dense|conv]
    atrous serve --checkpoint FILE [--host 127.0.0.1] [--port 8000] [--crf-params FILE] [--max-upload-mb N]
    atrous plot RUN [RUN ...] [--out curves.png|.svg]
    atrous demo [--out runs/demo]

Every command also takes --debug (tracebacks) and --import MODULE (a module of the user's that
registers models, losses or datasets; see atrous.plugins).

This is the one place that prints a user error (atrous.errors.UserError, data errors included):
the library names arguments as Python spells them and lists them in the error's `arguments`;
here each is written as the command's flag for it (`crop_size` -> `--crop-size`).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from atrous.commands import COMMANDS, command_module
from atrous.errors import UserError
from atrous.options import add_flags, collect, flags_of
from atrous.plugins import import_plugins, modules_named
from atrous.runtime.distributed import error_prefix


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _global_flags(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    parser.add_argument("--debug", action="store_true", help="show tracebacks", **default)
    parser.add_argument("--import", dest="imports", action="append", metavar="MODULE",
                        help="import a module that registers models, losses or datasets (repeatable)",
                        **({"default": argparse.SUPPRESS} if suppress else {"default": []}))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="atrous", description="Semantic segmentation from FCN to DeepLab v3+.")
    _global_flags(parser, suppress=False)
    each = argparse.ArgumentParser(add_help=False)
    _global_flags(each, suppress=True)  # every command takes them too, after its name
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        module = command_module(name)
        sub = commands.add_parser(name, parents=[each], help=module.HELP, description=module.HELP)
        if name == "train":  # flags not given leave no value: the config file's then stand
            sub.add_argument("--config", help="YAML file with the same options as the flags (flags win)")
            add_flags(sub, module.Options, defaults=False)
        else:
            add_flags(sub, module.Options)
    return parser


def _options(name: str, args: argparse.Namespace) -> Any:
    """The command's typed options from the parsed flags."""
    module = command_module(name)
    flags = collect(module.Options, vars(args))
    if name == "train":
        return module.resolve(flags, getattr(args, "config", None))
    return module.Options(**flags)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, command = "--debug" in argv, None
    try:
        import_plugins(modules_named(argv))  # before the parser: plugins add choices to it
        args = build_parser().parse_args(argv)
        debug, command = args.debug, args.command
        outcome = command_module(command).run(_options(command, args))
        return outcome if isinstance(outcome, int) else 0
    except UserError as err:
        if debug:
            raise
        print(f"{_prog(command)}: error: {error_prefix()}{as_flags(_one_line(err), err.arguments, command)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{_prog(command)}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # anything unexpected still ends in one line without --debug
        if debug or command is None:
            raise
        print(f"{_prog(command)}: error: {error_prefix()}{type(err).__name__}: {_one_line(err)} "
              "(rerun with --debug for details)", file=sys.stderr)
        return 1


def _prog(command: str | None) -> str:
    return "atrous" if command is None else f"atrous {command}"


def as_flags(message: str, arguments: Sequence[str], command: str | None) -> str:
    """`message` with the first appearance of each of `arguments` (Python names) written as
    `command`'s flag for it; a name the command has no flag for stays as it is."""
    flags = {"imports": "--import", "config": "--config", "window": "--slide"}  # infer's window: --slide
    if command is not None:
        flags.update(flags_of(command_module(command).Options))
    for name in arguments:
        for written in (f"{name}=False", f"{name}=True", name):  # a bool's value picks its flag
            found = re.search(rf"(?<![\w\-/.\\]){re.escape(written)}(?![\w=/\\])(?!\.\w)", message) \
                if written in flags else None  # a word of its own, not a piece of a path
            if found:
                message = message[:found.start()] + flags[written] + message[found.end():]
                break
    return message


def _one_line(err: BaseException) -> str:
    """The message in one line. An error raised in a data-loading worker arrives wrapped in
    the worker's traceback; its last line holds the original `module.Error: message`."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if len(lines) > 1 and lines[0].startswith("Caught "):
        last = lines[-1]
        head, sep, message = last.partition(": ")
        return message if sep and "." in head and " " not in head else last
    return lines[0]


if __name__ == "__main__":
    sys.exit(main())
