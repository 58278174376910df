"""Checking an experiment's config before anything is written or trained: `check_fields`.

    harness.check_fields(config, positive=("steps", "batch_size", "pairs"), finite=("learning_rate",),
                         probability=("dropout",), choices={"models": PRESETS})

raises ValueError("Config.steps = -1; expected a positive integer") for the first field that breaks a
rule (the class name is `type(config).__name__`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

# rule: (test of one number, what is expected; "{}" becomes "integer" or "number" by the field's type)
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "positive": (lambda x: x > 0, "a positive {}"),
    "nonnegative": (lambda x: x >= 0, "a non-negative {}"),
    "finite": (math.isfinite, "a finite {}"),
    "probability": (lambda x: 0 <= x <= 1, "a probability in [0, 1]"),
}


def check_fields(
    config: Any,
    *,
    positive: Iterable[str] = (),
    nonnegative: Iterable[str] = (),
    finite: Iterable[str] = (),
    probability: Iterable[str] = (),
    choices: Mapping[str, Collection[str]] | None = None,
) -> None:
    """ValueError "Config.field = value; expected ..." for the first field of the dataclass `config`
    that breaks its rule:

    positive / nonnegative: int or float fields, > 0 / >= 0 (NaN refused; inf allowed unless the
        field is also in `finite`); an int field must hold an int ("a positive integer").
    finite: float fields that must be finite (NaN and +-inf refused).
    probability: float fields in [0, 1].
    choices: {field: allowed values} for str fields.
    A field holding a tuple (or list) has every entry checked; a field holding None (an optional
    setting left unset) is skipped. A name that is not a field of `config` is a ValueError too.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"check_fields needs a dataclass instance; got {config!r}")
    cls = type(config).__name__
    fields = {f.name for f in dataclasses.fields(config)}
    try:
        hints = typing.get_type_hints(type(config))
    except (NameError, TypeError):  # unresolvable annotations: any int or float is a number
        hints = {}
    rules = {"positive": positive, "nonnegative": nonnegative, "finite": finite, "probability": probability}
    for rule, names in rules.items():
        test, expected = _RULES[rule]
        for name in _names(names, fields, cls, rule):
            value = getattr(config, name)
            integer = _entry_type(hints.get(name)) is int
            expected_here = expected.format("integer" if integer else "number")
            _check(cls, name, value, expected_here,
                   lambda x: _is_number(x, integer) and not math.isnan(x) and test(x))
    for name, allowed in (choices or {}).items():
        _names([name], fields, cls, "choices")
        allowed = tuple(allowed)
        expected_here = "one of " + ", ".join(map(repr, allowed))
        _check(cls, name, getattr(config, name), expected_here, lambda x: isinstance(x, str) and x in allowed)


def _check(cls: str, name: str, value: Any, expected: str, ok: Callable[[Any], bool]) -> None:
    if value is None:
        return
    if isinstance(value, (tuple, list)):
        for i, entry in enumerate(value):
            if not ok(entry):
                raise ValueError(f"{cls}.{name} = {value!r}; expected every entry to be {expected} "
                                 f"(entry {i} is {entry!r})")
    elif not ok(value):
        raise ValueError(f"{cls}.{name} = {value!r}; expected {expected}")


def _names(names: Iterable[str], fields: set[str], cls: str, rule: str) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in fields]
    if unknown:
        raise ValueError(f"check_fields({rule}=...): {cls} has no field {unknown[0]!r}")
    return names


def _is_number(x: Any, integer: bool) -> bool:
    if isinstance(x, bool):
        return False
    return isinstance(x, numbers.Integral if integer else numbers.Real)


def _entry_type(hint: Any) -> Any:
    """The type of a field's value or of its entries: `X | None` -> X, `tuple[X, ...]` -> X."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _entry_type(inner[0]) if len(inner) == 1 else hint
    if origin in (tuple, list) and args:
        return _entry_type(args[0])
    return hint
