"""Dataclass fields that declare their own help text, range and choices, once.

A config dataclass declares each field with :func:`option`; :func:`check_fields` validates
an instance against those declarations (finite numbers in range, known choices), and the
CLI derives its options from the same metadata (:mod:`ecomarine.cli._options`), so a
field's name, default, help and range are written in one place.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["FieldSpec", "check_fields", "option", "spec_of"]

_KEY = "ecomarine"


@dataclass(frozen=True)
class FieldSpec:
    """What a config field accepts, beyond its type.

    Attributes:
        help: One line for the CLI's help and the API docs.
        min: Smallest value (numbers). max: Largest value.
        min_open: ``min`` itself is excluded. max_open: ``max`` itself is excluded.
        choices: The allowed values (strings).
        path: ``"file"`` or ``"dir"`` when the value must name an existing one (CLI).
        flag: The CLI flag, when not ``--`` + the field name with dashes.
        metavar: How the CLI shows the value (e.g. ``HxW``).
        cli: False for fields the CLI sets itself.
    """

    help: str
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    choices: tuple[str, ...] | None = None
    path: str | None = None
    flag: str | None = None
    metavar: str | None = None
    cli: bool = True


def option(default: Any = dataclasses.MISSING, help: str = "", **spec: Any) -> Any:
    """A dataclass field with a :class:`FieldSpec`.

    A default made by a call goes in ``default_factory=`` (a keyword in ``spec``).
    """
    factory = spec.pop("default_factory", dataclasses.MISSING)
    metadata = {_KEY: FieldSpec(help=help, **spec)}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def spec_of(f: dataclasses.Field[Any]) -> FieldSpec | None:
    """The :class:`FieldSpec` of a field declared with :func:`option`, else ``None``."""
    spec = f.metadata.get(_KEY)
    return spec if isinstance(spec, FieldSpec) else None


def check_fields(obj: Any, error: type[Exception] = ConfigError) -> None:
    """Check every declared field of a dataclass instance: finite, in range, a known choice.

    Raises:
        ConfigError: (or ``error``) naming the field and what it accepts.
    """
    for f in dataclasses.fields(obj):
        spec = spec_of(f)
        if spec is None:
            continue
        value = getattr(obj, f.name)
        for item in value if isinstance(value, tuple) else (value,):
            _check_value(f.name, item, spec, error)


def _check_value(name: str, value: Any, spec: FieldSpec, error: type[Exception]) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise error(f"{name} must be a finite number, got {value!r}")
        if spec.min is not None and (value < spec.min or (spec.min_open and value == spec.min)):
            raise error(f"{name} must be {'>' if spec.min_open else '>='} {spec.min}, got {value}")
        if spec.max is not None and (value > spec.max or (spec.max_open and value == spec.max)):
            raise error(f"{name} must be {'<' if spec.max_open else '<='} {spec.max}, got {value}")
    if spec.choices is not None and isinstance(value, str) and value not in spec.choices:
        raise error(f"{name} must be one of {', '.join(spec.choices)}; got {value!r}")
