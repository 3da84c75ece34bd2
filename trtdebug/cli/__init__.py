"""The command line: the only package that imports click and rich."""

from trtdebug.cli.app import main

__all__ = ["main"]
