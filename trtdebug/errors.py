"""The one exception type the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input or bad usage: the message names the problem and what to do about it."""
