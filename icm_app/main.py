"""``icm``: build the parser from the menu, import the chosen command's module, run it.

Errors print one clear line and exit non-zero (2 for bad input, 1 for anything unexpected).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from icm_codec.commands import Command, HelpParser, run_command

from .menu import MENU, MenuEntry, entry

__all__ = ["build_parser", "load", "main"]

# the packages of this project: a missing one of these is a bug, not a missing install extra
_OWN = ("icm_app", "icm_codec", "icm_rpc", "analytics", "edge_encoder", "cloud_decoder",
        "console")


class _Version(argparse.Action):
    """``--version``, read from the installed distribution only when asked."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"icm {version()}")
        parser.exit()


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("icm-scalable")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from icm_codec import __version__

        return __version__


def load(e: MenuEntry) -> Command:
    """Import the module behind a menu entry and return its command."""
    return importlib.import_module(e.module).COMMANDS[e.name]


def _chosen(argv: Sequence[str]) -> MenuEntry | None:
    # the top level takes only flags without values, so the first word names the command
    return next((entry(a) for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The whole menu, with the arguments of only the command ``argv`` names (if any)."""
    chosen = _chosen(argv)
    parser = HelpParser(prog="icm", description="scalable image coding for machines and humans: "
                        "the codec, the services and the analyst's tools")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)
    for e in MENU:
        p = sub.add_parser(e.name, help=e.help, description=e.help)
        if e is chosen:
            load(e).configure(p)
    return parser


def _missing_extra(e: MenuEntry, err: ModuleNotFoundError) -> int:
    if (err.name or "").split(".")[0] in _OWN:
        raise err
    extras = ",".join(x.strip() for x in e.extra.split(","))
    print(f"icm {e.name}: error: {err.name} is not installed; this command needs "
          f"pip install 'icm-scalable[{extras}]'", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = _chosen(argv)
    try:
        args = build_parser(argv).parse_args(argv)
        chosen = entry(args.command)
        assert chosen is not None  # argparse accepts only the menu's names
        return run_command("icm", args.command, load(chosen), args)
    except ModuleNotFoundError as err:
        if chosen is None:
            raise
        return _missing_extra(chosen, err)
