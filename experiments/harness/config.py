"""Experiment configs: frozen dataclasses with named presets and command-line overrides.

A config class documents each field with a string literal right after it (an attribute docstring);
`--help` is generated from the fields, their types, defaults and those docstrings:

    @dataclasses.dataclass(frozen=True)
    class Config:
        steps: int = 100
        \"\"\"Optimizer steps per model.\"\"\"

    config = command_line(Config, {"big": Config(steps=10_000)}, prog="python -m experiments.x")

Command line, as Python tools write it: `--preset NAME` (applied first, wherever it stands), then
`--key value` or `--key=value` for any field (`--some-key` is `--some_key`; a later one wins).
Values are parsed by the field's type: bool (`--flag` alone is true; `--flag=false`, or
true/false/1/0/yes/no/on/off after it), int, float, str, `X | None` ("none"), and tuples
`tuple[int, ...]` / `tuple[str, ...]` written comma-separated (`--pairs 4,8,16`). `parse_args`
raises ValueError naming the argument; `command_line` turns that into one line on stderr and exit
status 2, as argparse does.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import pathlib
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

C = TypeVar("C")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (and of its dataclass bases), keyed by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) if isinstance(tp, type) else str(tp).replace("typing.", "")


def parse_value(name: str, text: str, tp: Any) -> Any:
    """Parse the command-line text of field `name` as type `tp`; ValueError naming the field if it fails."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() == "none" and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return parse_value(name, text, inner[0])
    elif origin is tuple:
        item = args[0] if args else str
        parts = [p.strip() for p in text.split(",") if p.strip()]
        return tuple(parse_value(name, p, item) for p in parts)
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"--{name}={text!r}: expected a boolean (true/false)")
    if tp in (int, float, str):
        try:
            return tp(text)
        except ValueError:
            raise ValueError(f"--{name}={text!r}: expected {tp.__name__}") from None
    raise ValueError(f"--{name}: fields of type {_type_name(tp)} cannot be set from the command line")


def apply_overrides(config: C, overrides: Mapping[str, str]) -> C:
    """Return `config` with the fields named in `overrides` (text values) replaced."""
    hints = typing.get_type_hints(type(config))
    fields = {f.name for f in dataclasses.fields(config)}
    values = {}
    for key, text in overrides.items():
        if key not in fields:
            raise ValueError(f"unknown option --{key}; expected one of: {', '.join(sorted(fields))}")
        values[key] = parse_value(key, text, hints[key])
    return dataclasses.replace(config, **values)


def help_text(cls: type, presets: Mapping[str, Any], prog: str, description: str = "") -> str:
    """Usage text listing presets and every field with its type, default and docstring."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    default = cls()
    lines = [f"usage: {prog} [--preset NAME] [--key VALUE ...]", ""]
    if description:
        lines += [description.strip(), ""]
    if presets:
        lines.append("presets (--preset NAME; later --key VALUE override it):")
        for name, preset in presets.items():
            changed = [
                f"{f.name}={getattr(preset, f.name)!r}"
                for f in dataclasses.fields(cls)
                if getattr(preset, f.name) != getattr(default, f.name)
            ]
            lines.append(f"  {name:<12} {', '.join(changed) or '(the defaults)'}")
        lines.append("")
    lines.append("options (--key VALUE or --key=VALUE; a bool --key alone is true):")
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        lines.append(f"  --{f.name}={shown}  ({_type_name(hints[f.name])})")
        if f.name in docs:
            lines += ["      " + line for line in textwrap.wrap(docs[f.name], 88)]
    return "\n".join(lines)


def split_args(argv: Sequence[str], booleans: frozenset[str] = frozenset()) -> dict[str, str]:
    """{key: text} of `--key value` / `--key=value` arguments (dashes in keys read as underscores).
    A key in `booleans` may stand alone (then "true") or take a following true/false word."""
    overrides: dict[str, str] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ValueError(f"argument {arg!r}: expected --key VALUE or --key=VALUE (see --help)")
        key, sep, text = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not sep:
            following = args[i + 1] if i + 1 < len(args) else None
            if key in booleans:
                if following is not None and following.lower() in _TRUE + _FALSE:
                    text, i = following, i + 1
                else:
                    text = "true"
            elif following is None or following.startswith("--"):
                raise ValueError(f"argument --{key}: expected a value (--{key} VALUE)")
            else:
                text, i = following, i + 1
        overrides[key] = text
        i += 1
    return overrides


def parse_args(
    cls: type[C],
    presets: Mapping[str, C],
    argv: Sequence[str] | None = None,
    prog: str | None = None,
    description: str = "",
) -> C:
    """Build a config from `--preset NAME` and `--key value` arguments (see the module docstring);
    `--help` prints help and exits. Bad arguments raise ValueError naming the argument."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        try:
            print(help_text(cls, presets, prog or "python -m ...", description), flush=True)
        except BrokenPipeError:  # `--help | head`: the reader left; no traceback at exit either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0)
    hints = typing.get_type_hints(cls)
    booleans = frozenset(f.name for f in dataclasses.fields(cls) if hints[f.name] is bool)
    overrides = split_args(argv, booleans)
    config = cls()
    if "preset" in overrides:
        name = overrides.pop("preset")
        if name not in presets:
            raise ValueError(f"--preset={name!r}: expected one of {', '.join(presets)}")
        config = presets[name]
    return apply_overrides(config, overrides)


def command_line(
    cls: type[C],
    presets: Mapping[str, C],
    argv: Sequence[str] | None = None,
    prog: str | None = None,
    description: str = "",
    check: Callable[[C], Any] | None = None,
) -> C:
    """`parse_args`, then `check(config)` if given, for a program's entry point: a ValueError from
    either ends the program with one line `PROG: error: MESSAGE` on stderr and exit status 2."""
    prog = prog or "python -m ..."
    try:
        config = parse_args(cls, presets, argv, prog=prog, description=description)
        if check is not None:
            check(config)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return config


def run_command(
    cls: type[C],
    presets: Mapping[str, C],
    run: Callable[[C], pathlib.Path],
    argv: Sequence[str] | None = None,
    prog: str | None = None,
    description: str = "",
    check: Callable[[C], Any] | None = None,
    fatal: tuple[type[Exception], ...] = (),
) -> pathlib.Path:
    """An experiment's whole program: join the other processes if launched on several
    (`distributed.initialize`), `command_line`, then `run(config)` -> its results folder; prints
    results.md and returns its path. An exception of a type in `fatal` (missing data, say) ends the
    program with one line `error: MESSAGE`."""
    from experiments.harness import distributed

    distributed.initialize()
    config = command_line(cls, presets, argv, prog=prog, description=description, check=check)
    try:
        folder = run(config)
    except fatal as e:
        raise SystemExit(f"error: {e}") from None
    out = pathlib.Path(folder) / "results.md"
    print(out.read_text())
    return out
