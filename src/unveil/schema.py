"""One schema machinery for every configuration unveil reads: experiment files, training options
(:class:`~unveil.training.config.TrainConfig`, ``unveil train --config``) and synthetic benchmark configurations.

A schema is a dataclass whose field annotations declare the checks: types, ``Literal`` choices, ranges
(``Annotated[float, Field(ge=0, lt=1)]``), nested dataclasses and mappings of them. :func:`section` checks a
mapping read from a document against it and refuses it with **every** problem at once, one line each::

    FILE:LINE: key.path: problem; got VALUE

(the line from the YAML node tree, :class:`Where`). Values are strict, as in a file: no string-to-number, no
bool-as-int, only finite floats. :func:`check_fields` runs the same checks on an instance built from Python
(from a dataclass's ``__post_init__``), so ``TrainConfig(lr=-1)`` and ``lr: -1`` in a file are refused alike.

>>> from dataclasses import dataclass
>>> @dataclass
... class Knob:
...     level: Annotated[int, Field(ge=0)] = 0
>>> section(Knob, {"level": -1}, (), Where("knob.yaml"))
Traceback (most recent call last):
...
unveil.schema.SchemaError: knob.yaml: level: should be greater than or equal to 0; got -1
"""

from __future__ import annotations

import functools
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from unveil.documents import compose_yaml, load_json, load_yaml_text, read_document_text
from unveil.errors import UnveilError, first_non_finite

__all__ = ["Field", "Problem", "SchemaError", "Where", "check_fields", "check_keys", "check_value", "choice",
           "parse_text", "read_document", "section"]

STRING_TAG = "tag:yaml.org,2002:str"
MERGE_TAG = "tag:yaml.org,2002:merge"


class SchemaError(UnveilError, ValueError):
    """A document or a set of options its schema refuses: one line per problem, ``FILE:LINE: key.path: problem``.
    Each family (experiment files, training options, synthetic configurations) raises its own subclass."""

    @property
    def problems(self) -> list[str]:
        """One message per problem (the lines of the message)."""
        return str(self).splitlines()


@dataclass(frozen=True)
class Problem:
    """One refusal: the key path it concerns, what is wrong (``; got VALUE`` included) and, where the path's
    node is not the right place (a key rather than its value), the line to cite."""

    path: tuple[Any, ...]
    text: str
    line: int | None = None


def key_path(path: Sequence[Any]) -> str:
    """``("grid", "tests", 1)`` as ``grid.tests[1]``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


class Where:
    """Turns problems into ``FILE:LINE: key.path: problem`` using the YAML node tree's marks (``root``); with no
    tree (values given from Python), ``ORIGIN: key.path: problem``."""

    def __init__(self, origin: str, root: yaml.Node | None = None, error_type: type[Exception] = SchemaError) -> None:
        self.origin, self.root, self.error_type = origin, root, error_type

    def line(self, path: Sequence[Any]) -> int | None:
        """The line of the deepest node along ``path`` (1-based), or None without a node tree."""
        node = self.root
        if node is None:
            return None
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

    def message(self, problem: Problem) -> str:
        line = problem.line if problem.line is not None else self.line(problem.path)
        key = key_path(problem.path)
        return f"{self.origin}{'' if line is None else f':{line}'}: {key + ': ' if key else ''}{problem.text}"

    def error(self, path: Sequence[Any], problem: str) -> Exception:
        """The error for one problem at ``path``."""
        return self.error_type(self.message(Problem(tuple(path), problem)))

    def refuse(self, problems: Sequence[Problem]) -> None:
        """Raise one error listing every problem (a line each); nothing when there are none."""
        if problems:
            raise self.error_type("\n".join(dict.fromkeys(self.message(p) for p in problems)))


def check_keys(node: yaml.Node | None, path: tuple[Any, ...] = ()) -> list[Problem]:
    """Every mapping key is a plain string, and appears once (PyYAML silently keeps the last)."""
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.tag == MERGE_TAG:
                continue
            if key.tag != STRING_TAG:
                problems.append(_not_a_name(key, path))
                continue
            if key.value in seen:
                problems.append(Problem((*path, key.value), "this key appears twice in the same mapping (YAML would "
                                                            "silently keep the last)", key.start_mark.line + 1))
            seen.add(key.value)
            problems += check_keys(value, (*path, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += check_keys(item, (*path, index))
    return problems


def _not_a_name(key: yaml.Node, path: tuple[Any, ...]) -> Problem:
    read = load_yaml_text(key.value, f"the key {key.value!r}") if isinstance(key, yaml.ScalarNode) else key.value
    kind = "boolean" if isinstance(read, bool) else type(read).__name__
    return Problem(path, f"{'' if path else 'top level: '}the key {key.value!r} is read by YAML as the {kind} "
                         f"{read!r}, not as a name (YAML 1.1 reads on, off, yes, no, true, false as booleans and "
                         "digits as numbers). Use a plain name (the audit's test sets are `test_sets:`) or quote it "
                         f"('{key.value}':).", key.start_mark.line + 1)


def parse_text(text: str, origin: str, error: type[UnveilError]) -> tuple[Any, Where]:
    """The value of the YAML document ``text`` (bounded: :func:`unveil.documents.compose_yaml`) and its
    :class:`Where`, its keys checked (:func:`check_keys`) before anything is built."""
    root, loader = compose_yaml(text, origin, error)
    try:
        where = Where(origin, root, error)
        where.refuse(check_keys(root))
        return (None if root is None else loader.construct_document(root)), where
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        if isinstance(exc, UnveilError):
            raise
        raise error(f"{origin}: not valid YAML ({' '.join(str(exc).split())})") from None
    finally:
        loader.dispose()


def read_document(path: str | Path, error: type[UnveilError], what: str) -> tuple[Any, Where]:
    """A YAML or JSON (``.json``) file's value and its :class:`Where`. JSON is read as JSON (the checked reader)
    and composed as YAML flow style for its line numbers and keys (none when YAML cannot read it)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    text = read_document_text(path, error, what)
    if path.suffix.lower() != ".json":
        return parse_text(text, str(path), error)
    value = load_json(path, error, what)
    try:
        root, loader = compose_yaml(text, str(path), error)
    except UnveilError:  # valid JSON that YAML cannot compose: no line numbers
        return value, Where(str(path), None, error)
    loader.dispose()
    where = Where(str(path), root, error)
    where.refuse(check_keys(root))  # a key given twice, which json.loads silently resolves
    return value, where


@functools.lru_cache(maxsize=256)
def _hashable_adapter(kind: Any) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


@functools.lru_cache(maxsize=64)
def _field_adapters(cls: type) -> dict[str, tuple[Any, TypeAdapter[Any]]]:
    """Each field of dataclass ``cls``: its annotation and the adapter that checks it (built once per class)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: (hints[f.name], TypeAdapter(hints[f.name])) for f in fields(cls)}


def _adapter(kind: Any) -> TypeAdapter[Any]:
    try:
        return _hashable_adapter(kind)
    except TypeError:  # an annotation holding something unhashable (a Field)
        return TypeAdapter(kind)


def _description(kind: Any) -> str:
    """The ``description`` of a ``Field`` in an ``Annotated`` annotation (why the check exists), or ''."""
    if typing.get_origin(kind) is Annotated:
        for extra in typing.get_args(kind)[1:]:
            if isinstance(extra, FieldInfo) and extra.description:
                return f" ({extra.description})"
    return ""


def _walk(value: Any, loc: Sequence[Any]) -> tuple[tuple[Any, ...], Any]:
    """The path along ``loc`` that exists in ``value`` (pydantic's union tags and ``[key]`` skipped), and the
    value found there."""
    path: list[Any] = []
    for part in loc:
        inside = part in value if isinstance(value, dict) else \
            isinstance(value, (list, tuple)) and isinstance(part, int) and 0 <= part < len(value)
        if inside:
            value = value[part]
            path.append(part)
    return tuple(path), value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _problems(error: ValidationError, kind: Any, value: Any, path: tuple[Any, ...]) -> list[Problem]:
    """pydantic's errors as problems at their key paths: ``should be ...; got VALUE``. The alternatives of a union
    are one problem (``should be a valid list or 'all'``)."""
    details = error.errors(include_url=False)
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    groups: dict[tuple[Any, ...], tuple[Any, list[str]]] = {}
    for detail in details:
        where, found = _walk(value, detail["loc"])
        if union:
            where, found = _walk(value, details[0]["loc"])
        text = detail["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
        text = text if detail["msg"].startswith("Value error, ") else f"should be {text}"
        if isinstance(found, float) and not math.isfinite(found):
            text = "should be a finite number"
        groups.setdefault(where, (found, []))[1].append(text)
    why = _description(kind)
    return [Problem((*path, *where), f"{' or '.join(dict.fromkeys(texts)).replace(' or should be ', ' or ')}{why}; "
                                     f"got {_shown(found)}") for where, (found, texts) in groups.items()]


def check_value(kind: Any, value: Any, path: tuple[Any, ...] = (), adapter: TypeAdapter[Any] | None = None, *,
                finite: bool = True) -> tuple[Any, list[Problem]]:
    """``value`` checked against the annotation ``kind`` (strict: no string-to-number, no bool-as-int, finite
    floats unless ``finite`` is False), and the problems found (all of them; the value is None when there are
    any)."""
    if kind is Any:
        return value, []
    try:
        checked = (adapter or _adapter(kind)).validate_python(value, strict=True)
    except ValidationError as error:
        return None, _problems(error, kind, value, path)
    found = first_non_finite(checked) if finite else None
    if found:
        return None, [Problem((*path, *found[0]), f"should be a finite number; got {found[1]!r}")]
    return checked, []


def _entries(cls: type, kind: Any) -> type | None:
    """The dataclass of a ``dict[str, Dataclass]`` annotation, else None."""
    if typing.get_origin(kind) is dict and is_dataclass(typing.get_args(kind)[1]):
        return typing.get_args(kind)[1]
    return None


def _section(cls: type, value: Any, path: tuple[Any, ...], problems: list[Problem],
             exclude: dict[str, str]) -> Any:
    """``value`` built into ``cls`` when every key and value passes; otherwise None, ``problems`` extended."""
    names = [f.name for f in fields(cls) if f.init and f.name not in exclude]
    value = {} if value is None else value
    if not isinstance(value, dict):
        problems.append(Problem(path, f"should be a mapping of {', '.join(names)}; got {_shown(value)}"))
        return None
    before = len(problems)
    for key in value:
        if key in exclude:
            problems.append(Problem((*path, key), f"not set here: {exclude[key]}"))
        elif key not in names:
            problems.append(Problem((*path, key), f"unknown key; known: {', '.join(names)}"))
    required = [f.name for f in fields(cls) if f.init and f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in value]
    if missing:
        problems.append(Problem(path, f"missing key(s) {', '.join(missing)}"))
    hints = typing.get_type_hints(cls, include_extras=True)
    values = {}
    for key, item in value.items():
        if key not in names:
            continue
        kind, entry_type = hints[key], _entries(cls, hints[key])
        if isinstance(kind, type) and is_dataclass(kind):
            values[key] = _section(kind, item, (*path, key), problems, {})
        elif entry_type is not None:
            entries, found = check_value(dict[str, Any], {} if item is None else item, (*path, key), finite=False)
            problems += found
            values[key] = {name: _section(entry_type, entry, (*path, key, name), problems, {})
                           for name, entry in (entries or {}).items()}
        else:
            values[key], found = check_value(kind, item, (*path, key))
            problems += found
    if len(problems) > before:
        return None
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:  # UnveilError subclasses are ValueErrors: checks across fields
        problems += [Problem(path, line) for line in str(error).splitlines()]
        return None


def section(cls: type, value: Any, path: tuple[Any, ...], where: Where, *,
            exclude: dict[str, str] | None = None) -> Any:
    """A mapping checked against dataclass ``cls`` and built: known keys, required keys, typed values (nested
    dataclasses and mappings of them); ``exclude`` names keys set elsewhere, with where. Every problem is
    raised at once by ``where``."""
    problems: list[Problem] = []
    built = _section(cls, value, path, problems, exclude or {})
    where.refuse(problems)
    return built


def check_fields(instance: Any, error: type[UnveilError], origin: str) -> None:
    """Check a dataclass instance's fields against their annotations (from ``__post_init__``): every problem in
    one ``error`` (``ORIGIN: field: problem; got VALUE``). A field a validator normalises (a rule's enum to its
    name) is stored normalised; numbers keep the type they were given (1 stays 1 where a float is declared)."""
    problems: list[Problem] = []
    cls: Any = type(instance)  # Any: mypy takes type[Any] for unhashable in lru_cache's signature
    for name, (kind, adapter) in _field_adapters(cls).items():
        current = getattr(instance, name)
        checked, found = check_value(kind, current, (name,), adapter)
        problems += found
        if not found and not isinstance(current, (int, float)) and checked is not current:
            object.__setattr__(instance, name, checked)
    Where(origin, None, error).refuse(problems)


def choice(value: Any, allowed: tuple[str, ...], path: tuple[Any, ...], where: Where) -> None:
    """Refuse ``value`` outside ``allowed``, naming them."""
    if value not in allowed:
        raise where.error(path, f"should be one of {', '.join(allowed)}; got {value!r}")
