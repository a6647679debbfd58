"""Options declared once: a dataclass field per option, with its type, default, choices,
range and help; the command-line flags, the config-file keys and the checks all come from it.

    @dataclass(kw_only=True)
    class Settings:
        lr: float | None = option(None, "base learning rate", gt=0)
        optimizer: str = option("sgd", "the optimiser", choices=("sgd", "adamw"))

    add_flags(parser, Settings)       # --lr LR, --optimizer {sgd,adamw}, help with the default
    check_options(Settings(lr=nan))   # UserError: lr must be a finite number, got nan
                                      # (err.arguments == ("lr",): the command line prints --lr)

A field's flag is `--` + its name with dashes; a bool whose default is True gets `--no-NAME`
(store_false); `flag=` names another flag (`--model-opt` for model_options, `--static`), and
`other=` a second flag that sets a bool's opposite (`--no-sync-bn`, `--dynamic`). Choices may be
a callable (a registry's names, read when the parser is built). Numbers are checked for type,
finiteness and range (`ge`, `gt`, `le`, `lt`), text against its choices, and the error names
the field and lists the choices, in one line; the command line writes the field as its flag
(`flags_of`).

Why not tyro or jsonargparse, which also turn dataclasses into flags: both were tried on
TrainConfig's kind of fields. They add 64 ms (tyro 1.0.17) and 81 ms (jsonargparse 4.53) of
import time to a start-up that torch already makes 2.5 s; neither refuses `--lr nan` by
itself; their errors span several lines (tyro draws a box, jsonargparse lists the Union's
members); and neither keeps today's flags as they are (`--no-flip` alone, `--channels-last`
without a value, `--static`/`--dynamic`, `--model-opt KEY=VALUE`). This module is the ~250
lines that keep every flag, print one line and add no dependency.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from atrous.errors import UserError

Choices = Sequence[Any] | Callable[[], Sequence[Any]] | None


@dataclass(frozen=True)
class Option:
    """How one dataclass field appears on the command line and how it is checked."""

    help: str = ""
    choices: Choices = None
    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    le: float | None = None
    lt: float | None = None
    flag: str | None = None  # the flag's name when it is not --<field-name>
    other: str | None = None  # a bool's second flag, setting the opposite (--no-sync-bn, --dynamic)
    metavar: str | None = None
    nargs: str | int | None = None  # lists: "+", "*" or a count
    group: str | None = None  # flags of one group are mutually exclusive (--iters | --epochs)
    positional: bool = False
    cli: bool = True  # False: a config-file key only
    show_default: bool = True  # False where the default is explained in the help itself
    append: bool = False  # a repeatable flag: a list of its values (a dict for KEY=VALUE pairs)
    const: Any = None  # with nargs="?": the value of the flag given alone (--save-best -> mIoU)
    also: tuple[str, ...] = ()  # words a bool option also takes: --resume alone is True, --resume auto "auto"

    def choice_names(self) -> tuple[Any, ...] | None:
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
           **spec: Any) -> Any:
    """A dataclass field that declares an option (see the module's docstring)."""
    metadata = {"option": Option(help=help, **spec)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Declared:
    """A declared field: the dataclass field, its Option and what its type annotation says."""

    field: dataclasses.Field
    option: Option
    base: type  # int, float, str, bool, dict, list or tuple
    optional: bool  # None allowed
    element: type  # a list's or tuple's item type; `base` otherwise

    @property
    def name(self) -> str:
        return self.field.name


def declared(cls: type) -> list[Declared]:
    """Each declared field of the dataclass `cls`, in order."""
    hints = typing.get_type_hints(cls)
    result = []
    for spec in dataclasses.fields(cls):
        opt = spec.metadata.get("option")
        if opt is not None:
            result.append(Declared(spec, opt, *_base_type(hints[spec.name])))
    return result


def _base_type(hint: Any) -> tuple[type, bool, type]:
    """int | None -> (int, True, int); tuple[float, ...] -> (tuple, False, float)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        base, _, element = _base_type(rest[0])
        return base, len(rest) < len(args), element
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        return origin, False, args[0] if args else str
    return (origin or hint), False, (origin or hint)


def flag_name(spec: dataclasses.Field, opt: Option) -> str:
    return opt.flag or "--" + spec.name.replace("_", "-")


def main_flag(item: Declared) -> str:
    """The flag that sets a field on the command line: flag_name(), or `--no-NAME` for a bool
    whose default is True."""
    spec, opt = item.field, item.option
    if item.base is bool and not opt.also and not opt.flag and default_of(spec) is True:
        return f"--no-{spec.name.replace('_', '-')}"
    return flag_name(spec, opt)


def flags_of(cls: type) -> dict[str, str]:
    """Each field of the options dataclass `cls` that has a flag, and its flag_name()
    (positional arguments: their name in capitals, as the usage line shows them); for a bool,
    also `NAME=True` and `NAME=False` and the flag that sets each (`dynamic=False`: `--static`)."""
    flags = {}
    for item in declared(cls):
        if not item.option.cli:
            continue
        flags[item.name] = item.name.upper() if item.option.positional else flag_name(item.field, item.option)
        default = default_of(item.field)
        if item.base is bool and not item.option.also and isinstance(default, bool):
            flags[f"{item.name}={not default}"] = main_flag(item)
            if item.option.other:
                flags[f"{item.name}={default}"] = item.option.other
    return flags


def default_of(spec: dataclasses.Field) -> Any:
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return dataclasses.MISSING


# --- the command line ----------------------------------------------------------------------

def add_flags(parser: argparse.ArgumentParser, cls: type, *, defaults: bool = True) -> None:
    """One flag per declared field of `cls`. With `defaults=False` a flag not given leaves no
    attribute (argparse.SUPPRESS), so that a config file's value is not overwritten by it."""
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for item in declared(cls):
        if not item.option.cli:
            continue
        target = parser
        if item.option.group:
            if item.option.group not in groups:
                groups[item.option.group] = parser.add_mutually_exclusive_group()
            target = groups[item.option.group]
        _add_flag(target, item, defaults)


def _help(spec: dataclasses.Field, opt: Option, base: type) -> str:
    default = default_of(spec)
    text = opt.help
    if not opt.show_default or default is dataclasses.MISSING or base is bool:
        return text
    if default is None or default == {} or default == ():
        return text
    shown = " ".join(str(v) for v in default) if isinstance(default, list | tuple) else default
    return f"{text} (default {shown})" if text else f"default {shown}"


def _add_flag(parser: Any, item: Declared, defaults: bool) -> None:
    spec, opt, base = item.field, item.option, item.base
    name, default = spec.name, default_of(spec)
    kwargs: dict[str, Any] = {"dest": name, "help": _help(spec, opt, base)}
    if not defaults:
        kwargs["default"] = argparse.SUPPRESS
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    if base is bool and opt.also:  # --resume (True) or --resume auto
        parser.add_argument(flag_name(spec, opt), nargs="?", const=True, type=_word_of(opt.also),
                            metavar="|".join(opt.also), **kwargs)
        return
    if base is bool:
        main = main_flag(item)
        action = "store_false" if default is True else "store_true"
        parser.add_argument(main, action=action, **kwargs)
        if opt.other:  # --sync-bn / --no-sync-bn, --static / --dynamic: one dest, both states explicit
            opposite = "store_true" if action == "store_false" else "store_false"
            parser.add_argument(opt.other, action=opposite, **dict(kwargs, help=f"the opposite of {main}"))
        return
    if opt.append:  # repeatable: --trimap 1 --trimap 3, --model-opt KEY=VALUE (pairs; a dict after collect())
        kwargs.pop("default", None)
        if not defaults:
            kwargs["default"] = argparse.SUPPRESS
        pairs = base is dict
        parser.add_argument(flag_name(spec, opt), action="append",
                            type=key_value if pairs else item.element,
                            metavar=opt.metavar or ("KEY=VALUE" if pairs else None), **kwargs)
        return
    choices = opt.choice_names()
    kwargs.update(type=item.element, metavar=opt.metavar)
    if choices is not None:  # listed in the usage; checked by check_options, with every choice in the error
        kwargs.update(metavar=opt.metavar or "{" + ",".join(map(str, choices)) + "}")
    if opt.nargs is not None:
        kwargs["nargs"] = opt.nargs
    if opt.const is not None:
        kwargs["const"] = opt.const
    if opt.positional:
        kwargs.pop("dest")
        parser.add_argument(name, **kwargs)
        return
    if default is dataclasses.MISSING and defaults:
        kwargs["required"] = True
    parser.add_argument(flag_name(spec, opt), **kwargs)


def _word_of(words: tuple[str, ...]) -> Callable[[str], str]:
    def word(text: str) -> str:
        if text not in words:
            raise argparse.ArgumentTypeError(f"expected nothing or one of {', '.join(words)}, got '{text}'")
        return text

    return word


def key_value(text: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE read as YAML (true, 3, 0.5, [1, 2], text)."""
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"{key}: cannot read the value '{value}'") from err
    return key.strip().replace("-", "_"), parsed


def collect(cls: type, flags: dict[str, Any]) -> dict[str, Any]:
    """The declared fields of `cls` found among parsed `flags`, repeatable KEY=VALUE flags
    turned into dicts (a flag that parsed to nothing is left out)."""
    values = {}
    for item in declared(cls):
        if item.name not in flags:
            continue
        value = flags[item.name]
        if item.option.append:
            value = dict(value or []) if item.base is dict else list(value or [])
        values[item.name] = value
    return values


# --- checks --------------------------------------------------------------------------------

def check_options(settings: Any) -> None:
    """Every declared field of a dataclass instance checked: type, finiteness, range, choices.
    Raises UserError naming the field (its `arguments`: the field's name), in one line.
    Returns nothing; bad values are not fixed."""
    for item in declared(type(settings)):
        value = getattr(settings, item.name)
        if value is dataclasses.MISSING or (value is None and item.optional):
            continue
        try:
            check_value(item.name, value, item)
        except UserError as err:
            raise UserError(str(err), argument=item.name) from None


def check_value(name: str, value: Any, item: Declared) -> None:
    """`value` checked against the declaration `item`; the error's message names it `name`."""
    base, opt = item.base, item.option
    if value is None:
        raise UserError(f"{name} needs a value")
    if base is bool:
        if not isinstance(value, bool) and value not in opt.also:
            also = "".join(f" or {word}" for word in opt.also)
            raise UserError(f"{name} must be true or false{also}, got {value!r}")
        return
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{name} must be a whole number, got {value!r}")
        _check_range(name, value, opt)
        _check_choice(name, value, opt)
    elif base is float:
        _check_number(name, value, opt)
    elif base is str:
        if not isinstance(value, str):
            raise UserError(f"{name} must be text, got {value!r}")
        _check_choice(name, value, opt)
    elif base is dict:
        if not isinstance(value, dict):
            raise UserError(f"{name} must be a mapping of name: value, got {value!r}")
    elif base in (tuple, list):
        if not isinstance(value, list | tuple):
            raise UserError(f"{name} must be a list, got {value!r}")
        for element in value:
            if item.element is str:
                if not isinstance(element, str):
                    raise UserError(f"{name} must be a list of text, got {value!r}")
            elif item.element is int and (isinstance(element, bool) or not isinstance(element, int)):
                raise UserError(f"{name} must be whole numbers, got {element!r}")
            else:
                _check_number(name, element, opt)


def _check_choice(name: str, value: Any, opt: Option) -> None:
    choices = opt.choice_names()
    if choices is not None and value not in choices:
        noun = name.lstrip("-").replace("-", " ").replace("_", " ")
        raise UserError(f"{name}: unknown {noun} {value!r}; choose one of: {', '.join(map(str, choices))}")


def _check_number(name: str, value: Any, opt: Option) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value}")
    _check_range(name, value, opt)


def _check_range(name: str, value: float, opt: Option) -> None:
    bounds = ((opt.ge, lambda v, b: v >= b, "at least"), (opt.gt, lambda v, b: v > b, "greater than"),
              (opt.le, lambda v, b: v <= b, "at most"), (opt.lt, lambda v, b: v < b, "less than"))
    for bound, holds, words in bounds:
        if bound is not None and not holds(value, bound):
            raise UserError(f"{name} must be {words} {bound:g}, got {value:g}")


# --- option groups that every kind of command shares -----------------------------------------

@dataclass(kw_only=True)
class ProgressOptions:
    progress: bool = option(True, "no progress bar")


# --- config files --------------------------------------------------------------------------

def read_mapping_file(path: str, option: str) -> dict[str, Any]:
    """A YAML (or JSON) file holding a mapping, with one-line errors naming the argument
    `option` that gave the file (its `arguments`)."""
    import yaml

    if not os.path.isfile(path):
        raise UserError(f"{option} file not found: {path}", argument=option)
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{option} {path} is not valid YAML/JSON: {str(err).splitlines()[0]}",
                        argument=option) from err
    if not isinstance(data, dict):
        raise UserError(f"{option} {path} must hold a mapping of name: value", argument=option)
    return data


def read_config(path: str, known: type | Iterable[str], option: str = "config") -> dict[str, Any]:
    """A config file's values (keys with dashes or underscores) for the fields of the dataclass
    `known` (or the names it lists); an unknown key is an error naming the closest known one."""
    data = {str(k).replace("-", "_"): v for k, v in read_mapping_file(path, option).items()}
    known = {spec.name for spec in dataclasses.fields(known)} if isinstance(known, type) else set(known)
    for key in data:
        if key not in known:
            raise UserError(f"{option} {path}: unknown option '{key}'{_did_you_mean(key, known)}",
                            argument=option)
    return data


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
