"""Click options derived from a config dataclass (see :mod:`ecomarine._fields`).

One option per field, nested dataclasses flattened (their fields keep their own names):
the flag, type, range, choices, default and help all come from the field's declaration,
so a new field is on the command line as soon as it exists.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from .._fields import FieldSpec, spec_of
from ._common import FiniteFloatRange

__all__ = ["Leaf", "build_dataclass", "dataclass_options", "leaves"]

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")
_SEP = "__"


@dataclass(frozen=True)
class Leaf:
    """One settable field: where it sits in the (nested) config, and how it is declared.

    Attributes:
        path: Field names from the outer dataclass down (``("augment", "hflip")``).
        spec: The field's declaration.
        type: The field's resolved type.
        default: Its default (``dataclasses.MISSING`` when required).
    """

    path: tuple[str, ...]
    spec: FieldSpec
    type: Any
    default: Any

    @property
    def dest(self) -> str:
        """The click parameter name (an identifier)."""
        return _SEP.join(self.path)

    @property
    def flag(self) -> str:
        """The command-line flag."""
        return self.spec.flag or "--" + self.path[-1].replace("_", "-")


def leaves(cls: type[Any], prefix: tuple[str, ...] = ()) -> Iterator[Leaf]:
    """Every CLI-settable field of a config dataclass, nested ones flattened."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        spec = spec_of(f)
        if spec is None or not spec.cli:
            continue
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind) and isinstance(kind, type):
            yield from leaves(kind, (*prefix, f.name))
            continue
        default: Any = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        yield Leaf((*prefix, f.name), spec, kind, default)


def _optional_inner(kind: Any) -> Any:
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def _size(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
    if value is None or isinstance(value, tuple):
        return value
    try:
        h, w = (int(x) for x in str(value).lower().split("x"))
    except ValueError as exc:
        raise click.BadParameter(f"expected HxW such as 256x96, got {value!r}") from exc
    return h, w


def _click_option(leaf: Leaf) -> Callable[[_F], _F]:
    spec, kind = leaf.spec, _optional_inner(leaf.type)
    required = leaf.default is dataclasses.MISSING
    kwargs: dict[str, Any] = {"help": spec.help, "show_default": not required}
    if not required:
        kwargs["default"] = leaf.default
    else:
        kwargs["required"] = True
    decls: list[str] = [leaf.flag, leaf.dest]
    opens = {"min_open": spec.min_open, "max_open": spec.max_open}
    if kind is bool:
        name = leaf.flag[2:]
        decls = [f"--{name}/--no-{name}", leaf.dest]
    elif kind is int:
        lo, hi = (None if v is None else int(v) for v in (spec.min, spec.max))
        kwargs["type"] = click.IntRange(lo, hi, **opens)
    elif kind is float:
        kwargs["type"] = FiniteFloatRange(spec.min, spec.max, **opens)
    elif kind == tuple[int, int]:
        kwargs["callback"] = _size
        kwargs["metavar"] = spec.metavar or "HxW"
        if not required:
            kwargs["default"] = "x".join(str(v) for v in leaf.default)
    elif kind == tuple[str, ...]:
        kwargs["multiple"] = True
        kwargs["show_default"] = False
        kwargs["default"] = tuple(leaf.default)
    elif spec.choices is not None:
        kwargs["type"] = click.Choice(spec.choices)
    elif spec.path is not None:
        kwargs["type"] = click.Path(
            exists=True, dir_okay=spec.path == "dir", file_okay=spec.path == "file"
        )
    elif kind is not str:
        raise TypeError(f"no CLI option for {leaf.dest}: {kind!r}")
    if spec.metavar and "metavar" not in kwargs:
        kwargs["metavar"] = spec.metavar
    return click.option(*decls, **kwargs)


def dataclass_options(cls: type[Any]) -> Callable[[_F], _F]:
    """A decorator adding one click option per settable field of ``cls``.

    Raises:
        TypeError: Two fields with the same flag, or a type the CLI cannot parse.
    """
    items = list(leaves(cls))
    flags = [leaf.flag for leaf in items]
    clash = sorted({f for f in flags if flags.count(f) > 1})
    if clash:
        raise TypeError(f"{cls.__name__}: fields share the flags {clash}")

    def decorate(func: _F) -> _F:
        for leaf in reversed(items):  # click lists options in decoration order, reversed
            func = _click_option(leaf)(func)
        return func

    return decorate


def build_dataclass(cls: type[_T], values: Mapping[str, Any]) -> _T:
    """``cls`` built from the values of :func:`dataclass_options`' options (nested too)."""
    return _build(cls, values, ())


def _build(cls: type[_T], values: Mapping[str, Any], prefix: tuple[str, ...]) -> _T:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        spec = spec_of(f)
        if spec is None or not spec.cli:
            continue
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind) and isinstance(kind, type):
            kwargs[f.name] = _build(kind, values, (*prefix, f.name))
        else:
            dest = _SEP.join((*prefix, f.name))
            if dest in values:
                kwargs[f.name] = values[dest]
    return cls(**kwargs)
