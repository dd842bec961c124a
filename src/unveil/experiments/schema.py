"""Checking a YAML document against dataclasses, with errors that name the file, the line and the key.

A mapping is read into a dataclass by :func:`section`: unknown keys, missing keys and values of the
wrong type (strict: no string-to-number, no bool-as-int) are refused with ``FILE:LINE: key.path:
problem``; the line comes from the YAML node tree (:class:`Where`). :func:`check_keys` refuses keys
YAML reads as something other than a name (``on``, ``yes`` ...) and keys given twice.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, fields, is_dataclass
from typing import Any

import yaml

from unveil.documents import DocumentError, load_yaml_text
from unveil.errors import UnveilError, first_non_finite
from unveil.training.config import ConfigError

STRING_TAG = "tag:yaml.org,2002:str"


class Where:
    """Turns a key path into ``FILE:LINE: key.path: problem`` using the YAML node tree's marks."""

    def __init__(self, origin: str, root: yaml.Node, error_type: type[UnveilError] = DocumentError) -> None:
        self.origin, self.root, self.error_type = origin, root, error_type

    def line(self, path: tuple[Any, ...]) -> int:
        node = self.root
        for part in path:
            if isinstance(node, yaml.MappingNode):
                match = next((value for key, value in node.value if key.value == str(part)), None)
                if match is None:
                    break
                node = match
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            else:
                break
        return node.start_mark.line + 1

    def error(self, path: tuple[Any, ...], problem: str) -> UnveilError:
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        return self.error_type(f"{self.origin}:{self.line(path)}: {key + ': ' if key else ''}{problem}")


def check_keys(node: yaml.Node, path: tuple[Any, ...], where: Where) -> None:
    """Every mapping key is a plain string, and appears once (PyYAML silently keeps the last)."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                continue
            if key.tag != STRING_TAG:
                read = (load_yaml_text(key.value, where.origin, where.error_type)
                        if isinstance(key, yaml.ScalarNode) else key.value)
                kind = "boolean" if isinstance(read, bool) else type(read).__name__
                raise where.error_type(
                    f"{where.origin}:{key.start_mark.line + 1}: {'.'.join(map(str, path)) or 'top level'}: the key "
                    f"{key.value!r} is read by YAML as the {kind} {read!r}, not as a name (YAML 1.1 reads on, off, "
                    "yes, no, true, false as booleans and digits as numbers). Use a plain name (the audit's test "
                    f"sets are `test_sets:`) or quote it ('{key.value}':).")
            if key.value in seen:
                place = ".".join(map(str, (*path, key.value)))
                raise where.error_type(f"{where.origin}:{key.start_mark.line + 1}: {place}: this key appears twice "
                                      "in the same mapping (YAML would silently keep the last)")
            seen.add(key.value)
            check_keys(value, (*path, key.value), where)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            check_keys(item, (*path, index), where)


def typed(kind: Any, value: Any, path: tuple[Any, ...], where: Where) -> Any:
    """``value`` checked against the type annotation ``kind`` (strict: no string-to-number, no bool-as-int)."""
    if kind is Any:
        return value
    from pydantic import TypeAdapter, ValidationError

    try:
        checked = TypeAdapter(kind).validate_python(value, strict=True)
    except ValidationError as error:
        problems = error.errors()
        inner = tuple(p for p in problems[0]["loc"] if isinstance(p, int))
        expected = " or ".join(dict.fromkeys(p["msg"].removeprefix("Input should be ") for p in problems))
        raise where.error((*path, *inner), f"should be {expected}; got {value!r}") from None
    finite_numbers(checked, path, where)
    return checked


def finite_numbers(value: Any, path: tuple[Any, ...], where: Where) -> None:
    """Every float in ``value`` is finite: YAML reads ``.nan`` and ``.inf`` as floats, which pass every range
    check as False."""
    found = first_non_finite(value)
    if found:
        raise where.error((*path, *found[0]), f"should be a finite number; got {found[1]!r}")


def section(cls: type, value: Any, path: tuple[Any, ...], where: Where, *,
             exclude: dict[str, str] | None = None) -> Any:
    """A mapping checked against dataclass ``cls``: known keys, required keys, typed values (nested)."""
    exclude = exclude or {}
    names = [f.name for f in fields(cls) if f.init and f.name not in exclude]
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise where.error(path, f"should be a mapping of {', '.join(names)}; got {value!r}")
    for key in value:
        if key in exclude:
            raise where.error((*path, key), f"not set here: {exclude[key]}")
        if key not in names:
            raise where.error((*path, key), f"unknown key; known: {', '.join(names)}")
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in value]
    if missing:
        raise where.error(path, f"missing key(s) {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, item in value.items():
        kind = hints[key]
        if isinstance(kind, type) and is_dataclass(kind):
            values[key] = section(kind, item, (*path, key), where)
        elif typing.get_origin(kind) is dict and is_dataclass(typing.get_args(kind)[1]):
            entries = typed(dict[str, Any], item if item is not None else {}, (*path, key), where)
            values[key] = {name: section(typing.get_args(kind)[1], entry, (*path, key, name), where)
                           for name, entry in entries.items()}
        else:
            values[key] = typed(kind, item, (*path, key), where)
    try:
        return cls(**values)
    except (ConfigError, ValueError, TypeError) as error:
        raise where.error(path, str(error)) from None


def choice(value: Any, allowed: tuple[str, ...], path: tuple[Any, ...], where: Where) -> None:
    if value not in allowed:
        raise where.error(path, f"should be one of {', '.join(allowed)}; got {value!r}")
