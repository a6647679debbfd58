"""The error the command line turns into one line and a non-zero exit."""

from __future__ import annotations

from collections.abc import Sequence


class UserError(Exception):
    """Something the user can fix: a bad option, file or checkpoint. One-line message.

    The library names arguments as Python spells them ("crop_size must be at least 32, got
    8") and lists them in `argument` (a name, or several): `err.arguments` is
    `("crop_size",)`. The command line, the one place that prints these errors, writes each
    listed name's first appearance in the message as its flag ("--crop-size must be at least
    32, got 8"; a name listed twice: its first two); from Python the message stays as raised.
    """

    def __init__(self, message: str = "", *, argument: str | Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.arguments: tuple[str, ...] = (
            () if argument is None else (argument,) if isinstance(argument, str) else tuple(argument))

    def __reduce__(self):  # the arguments survive a trip through pickle (a worker process)
        return (_rebuild, (type(self), self.args, self.arguments, self.__dict__))


def _rebuild(cls: type[UserError], args: tuple, arguments: tuple[str, ...], state: dict) -> UserError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    err.arguments = arguments
    return err
