"""The shape of an ``icm`` subcommand, shared by every package that contributes one.

A package's command module holds a :class:`CommandTable`; the ``icm`` shell (``icm_app``)
imports that module only when one of its commands runs, so the table has to be cheap to import:
this module imports nothing but the standard library.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from typing import NamedTuple

from .errors import ICMError

__all__ = ["Command", "CommandTable", "DefaultsHelpFormatter", "HelpParser", "run_command"]

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


class Command(NamedTuple):
    """One subcommand: how to add its arguments, what runs it, its one-line help."""

    configure: Configure
    run: Run
    help: str


class CommandTable(dict[str, Command]):
    """Name → :class:`Command`, filled by the :meth:`command` decorator."""

    def command(self, name: str, help_text: str, configure: Configure) -> Callable[[Run], Run]:
        """Register ``fn(args) -> exit code`` as ``icm NAME``; ``configure`` adds its arguments."""

        def wrap(fn: Run) -> Run:
            self[name] = Command(configure, fn, help_text)
            return fn

        return wrap


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Append ``(default: X)`` to an option's help, so help and behaviour cannot disagree.

    Unlike argparse's ``ArgumentDefaultsHelpFormatter`` it stays quiet where a default says
    nothing (None, False, an empty list, a flag without a value) and where the help text
    already names its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if not _shows_default(action) or "default" in (action.help or ""):
            return action.help
        return f"{action.help} (default: %(default)s)"

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and _shows_default(action):
            action = copy.copy(action)  # argparse prints no help line for help=None
            action.help = "default: %(default)s"
        return super()._format_action(action)


def _shows_default(action: argparse.Action) -> bool:
    default = action.default
    # a flag without a value (--loop, --no-mtls) is off unless given: its default says nothing
    quiet = (default is None or default is False or default is argparse.SUPPRESS
             or action.nargs == 0)
    return bool(action.option_strings) and not quiet and default not in ([], "")


class HelpParser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows defaults, in its nested subcommands too.

    ``add_subparsers`` builds child parsers with the parent's class, so the formatter reaches
    ``icm analyst frames --help`` without each command asking for it.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def run_command(prog: str, name: str, command: Command, args: argparse.Namespace) -> int:
    """Run one command; a user's mistake prints one clear line and exits 2, Ctrl-C exits 130.

    Anything else is a bug and keeps its traceback (exit 1).
    """
    try:
        return int(command.run(args) or 0)
    except (ICMError, ValueError, OSError) as e:
        print(f"{prog} {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
