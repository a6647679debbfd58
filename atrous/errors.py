"""The error the command line turns into one line and a non-zero exit."""


class UserError(Exception):
    """Something the user can fix: a bad option, file or checkpoint. One-line message."""
