"""Command-line flags generated from a config dataclass: one place for a setting.

A config field declared with :func:`flag` carries its own flag spelling, help text and
environment variable; its default is the field's default. :func:`add_config_flags` adds one
argparse option per such field (in field order, in the argument group the field names), and
:func:`config_from_args` turns the parsed namespace back into the dataclass. A field that the
command line does not set directly is declared with :func:`not_a_flag` and says why, so every
field is one or the other (:func:`add_config_flags` refuses a field that is neither).

Precedence: a flag on the command line, else its environment variable, else the field's
default. An environment value is converted (and checked against the choices) like the flag's
own text, after parsing, so a bad one is an argparse error naming the variable, never a
traceback, and ``--help`` still works with one set. Help shows the variable as ``[$NAME]`` and
the default (``commands.DefaultsHelpFormatter``).

Like :mod:`icm_codec.commands`, this module imports nothing but the standard library, so a
command's ``--help`` stays cheap.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Flag", "NotAFlag", "add_config_flags", "add_env_flag", "config_from_args", "env_names",
           "flag", "flag_names", "not_a_flag", "parse_bool"]

META = "icm.flag"
_MISSING = dataclasses.MISSING

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one config field appears on the command line."""

    help: str
    flags: tuple[str, ...] = ()        # option strings; default ``--field-name``
    env: str | None = None             # None: derived from the command's prefix; "": none
    type: Callable[[str], Any] | None = None   # default: from the field's annotation
    choices: Sequence[Any] | None = None
    nargs: str | None = None           # "+" / "*": a list on the command line
    append: bool = False               # repeatable flag collecting a list
    metavar: str | None = None
    group: str | None = None           # argparse group title
    show: Callable[[Any], str] | None = None   # a non-string default as the flag's text


@dataclasses.dataclass(frozen=True)
class NotAFlag:
    """A config field the generated flags leave alone, and why."""

    why: str
    via: tuple[str, ...] = ()          # flags the command adds itself that set this field


def flag(default: Any = _MISSING, *, help: str, flags: Sequence[str] = (),
         env: str | None = None, type: Callable[[str], Any] | None = None,
         choices: Sequence[Any] | None = None, nargs: str | None = None, append: bool = False,
         metavar: str | None = None, group: str | None = None,
         show: Callable[[Any], str] | None = None,
         default_factory: Callable[[], Any] | Any = _MISSING) -> Any:
    """A dataclass field that is also a command-line flag (see :class:`Flag`)."""
    spec = Flag(help, tuple(flags), env, type, tuple(choices) if choices else None, nargs,
                append, metavar, group, show)
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={META: spec})


def not_a_flag(default: Any = _MISSING, *, why: str, via: Sequence[str] = (),
               default_factory: Callable[[], Any] | Any = _MISSING) -> Any:
    """A dataclass field with no generated flag: set by code, or by flags the command adds."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={META: NotAFlag(why, tuple(via))})


def parse_bool(text: str) -> bool:
    """An environment switch: 1/true/yes/on or 0/false/no/off (or empty)."""
    v = text.strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise ValueError(f"expected one of {'/'.join(TRUE)} or {'/'.join(FALSE[:-1])}")


# -- reading the dataclass -------------------------------------------------------------------
def _spec(f: dataclasses.Field) -> Flag | NotAFlag:
    spec = f.metadata.get(META)
    if not isinstance(spec, Flag | NotAFlag):
        raise TypeError(f"config field {f.name!r} is neither flag(...) nor not_a_flag(...): "
                        "declare its flag, or why it has none")
    return spec


def _flag_fields(cls: type) -> list[tuple[dataclasses.Field, Flag]]:
    return [(f, s) for f in dataclasses.fields(cls) if isinstance(s := _spec(f), Flag)]


def _option_strings(f: dataclasses.Field, spec: Flag) -> tuple[str, ...]:
    return spec.flags or ("--" + f.name.replace("_", "-"),)


def _env_name(f: dataclasses.Field, spec: Flag, prefix: str | None) -> str:
    if spec.env is not None:
        return spec.env
    if not prefix:
        return ""
    return prefix + _option_strings(f, spec)[0].lstrip("-").replace("-", "_").upper()


def flag_names(cls: type) -> dict[str, tuple[str, ...]]:
    """Field name → the option strings that set it (generated, or named by ``via``)."""
    out = {}
    for f in dataclasses.fields(cls):
        spec = _spec(f)
        out[f.name] = _option_strings(f, spec) if isinstance(spec, Flag) else spec.via
    return out


def env_names(cls: type, env_prefix: str | None = None) -> dict[str, str]:
    """Field name → its environment variable, for the fields that have one."""
    return {f.name: e for f, s in _flag_fields(cls) if (e := _env_name(f, s, env_prefix))}


_SCALARS: dict[str, Callable[[str], Any]] = {"str": str, "int": int, "float": float,
                                             "Path": Path}


def _base_type(f: dataclasses.Field) -> str:
    """The annotation's name without ``| None`` (annotations may be strings)."""
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    parts = [p.strip() for p in t.split("|") if p.strip() != "None"]
    return parts[0] if len(parts) == 1 else t


def _default(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


# -- argparse --------------------------------------------------------------------------------
class _EnvText(str):
    """A default read from the environment: argparse converts it after parsing."""

    env: str


class _Convert:
    """A flag's type: converts a command-line text, or an environment value with its name."""

    def __init__(self, convert: Callable[[str], Any], choices: Sequence[Any] | None,
                 many: bool, name: str) -> None:
        self.convert, self.choices, self.many, self.__name__ = convert, choices, many, name

    def __call__(self, text: str) -> Any:
        if not isinstance(text, _EnvText):
            return self.convert(text)
        items = [t for t in text.split(os.pathsep) if t] if self.many else [text]
        values = []
        for item in items:
            try:
                value = self.convert(item)
            except (TypeError, ValueError) as e:
                why = str(e) if self.__name__ == "switch" else f"invalid {self.__name__} value"
                raise argparse.ArgumentTypeError(f"${text.env}={text!r}: {why}") from None
            if self.choices is not None and value not in self.choices:
                raise argparse.ArgumentTypeError(
                    f"${text.env}={text!r}: choose from {', '.join(map(repr, self.choices))}")
            values.append(value)
        return values if self.many else values[0]


class _Switch(argparse.Action):
    """A flag without a value (``--loop``, ``--no-mtls``): sets ``const``.

    Its environment variable says whether the flag is on (``ICM_INSECURE=1``).
    """

    def __init__(self, option_strings, dest, const, default=None, type=None,
                 help=None, **kwargs):
        super().__init__(option_strings, dest, nargs=0, const=const, default=default,
                         type=type, help=help, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const)


class _Append(argparse.Action):
    """A repeatable flag; given at all, it replaces its default (and its variable's list)."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = getattr(namespace, self.dest, None)
        items = [] if items is self.default or not isinstance(items, list) else list(items)
        items.append(values)
        setattr(namespace, self.dest, items)


def add_env_flag(where: argparse.ArgumentParser | Any, *flags: str, help: str, env: str = "",
                 default: Any = None, type: Callable[[str], Any] = str,
                 choices: Sequence[Any] | None = None, nargs: str | None = None,
                 append: bool = False, metavar: str | None = None, switch: bool = False,
                 required: bool = False, dest: str | None = None,
                 environ: Mapping[str, str] | None = None) -> argparse.Action:
    """One flag with an environment variable (``env``; "" for none), for the options a command
    declares itself: converted and checked like a generated one (a bad value of the variable is
    an argparse error naming it, never a traceback, and ``--help`` still works with it set).

    ``switch``: a flag without a value that sets ``not default``; its variable is a yes/no.
    """
    environ = os.environ if environ is None else environ
    kw: dict[str, Any] = {"help": help.replace("%", "%%")  # argparse formats help with %(...)s
                          + (f" [${env}]" if env else ""), "default": default}
    if dest:
        kw["dest"] = dest
    if switch:
        on = not default
        kw.update(action=_Switch, const=on,
                  type=_Convert(lambda t, on=on: parse_bool(t) == on, None, False, "switch"))
    else:
        if metavar or not choices:  # argparse shows choices as {a,b}
            kw["metavar"] = metavar or flags[0].lstrip("-").replace("-", "_").upper()
        kw["type"] = _Convert(type, choices, bool(append or nargs),
                              getattr(type, "__name__", "value"))
        if choices is not None:
            kw["choices"] = choices
        if nargs:
            kw["nargs"] = nargs
        if append:
            kw["action"] = _Append
    if env and env in environ:
        kw["default"] = _env_text(environ[env], env)  # argparse converts it after parsing
    elif required:
        kw["required"] = True
    return where.add_argument(*flags, **kw)


def add_config_flags(parser: argparse.ArgumentParser | Any, cls: type, *,
                     env_prefix: str | None = None,
                     environ: Mapping[str, str] | None = None) -> None:
    """Add a flag for every :func:`flag` field of dataclass ``cls`` (dest: the field's name).

    A field without its own ``env`` gets ``env_prefix`` + its flag in capitals (``--max-batch``
    → ``ICM_CLOUD_MAX_BATCH``), or none when ``env_prefix`` is None. A field without a default
    is a required flag, or, where it has a variable, a value :func:`config_from_args` asks for.
    """
    groups: dict[str, Any] = {}
    for f, spec in _flag_fields(cls):
        where = parser
        if spec.group:
            if spec.group not in groups:
                groups[spec.group] = parser.add_argument_group(spec.group)
            where = groups[spec.group]
        env = _env_name(f, spec, env_prefix)
        default = _default(f)
        base = _base_type(f)
        switch = base == "bool" and spec.type is None
        convert: Callable[[str], Any] = str
        if switch and default is _MISSING:
            raise TypeError(f"switch {f.name!r} needs a default")
        if not switch:
            if (spec.append or spec.nargs) and base.startswith("list[") and base.endswith("]"):
                base = base[5:-1]  # the flag's values are the list's items
            found = spec.type or _SCALARS.get(base)
            if found is None:
                raise TypeError(f"config field {f.name!r} ({f.type}) needs flag(type=...)")
            convert = found
        missing = default is _MISSING
        if missing:
            default = None  # with a variable, config_from_args asks for the flag or it
        elif spec.show is not None:
            default = spec.show(default)  # a string: argparse converts it after parsing
        add_env_flag(where, *_option_strings(f, spec), help=spec.help, env=env, default=default,
                     type=convert, choices=spec.choices, nargs=spec.nargs, append=spec.append,
                     metavar=spec.metavar, switch=switch,
                     required=missing and not env, dest=f.name,
                     environ=environ)


def _env_text(value: str, env: str) -> _EnvText:
    text = _EnvText(value)
    text.env = env
    return text


def config_from_args(cls: type, args: argparse.Namespace, *, env_prefix: str | None = None,
                     **values: Any) -> Any:
    """The dataclass from a parsed namespace: every :func:`flag` field from its flag (or
    variable, or default), the rest from ``values`` or their defaults; ``values`` win.

    A field without a default that is still unset raises ValueError naming its flag and
    variable (``env_prefix`` as given to :func:`add_config_flags`).
    """
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kw[f.name] = values[f.name]
        elif isinstance(_spec(f), Flag) and hasattr(args, f.name):
            value = getattr(args, f.name)
            if value in (None, "") and _default(f) is _MISSING:
                spec = _spec(f)
                env = _env_name(f, spec, env_prefix)
                raise ValueError(f"{_option_strings(f, spec)[0]} is required"
                                 + (f" (or set {env})" if env else ""))
            kw[f.name] = value
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
    return cls(**kw)
