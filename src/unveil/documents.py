"""One checked reading of every YAML and JSON document unveil is given (experiment files, recipes, synthetic
benchmark configurations, ``train --config``, ``bundle.json``).

A document is refused before it is parsed when its file is over a size cap, and while it is parsed when it
nests too deeply, holds too many aliases or expands beyond a node budget (a 494-byte YAML alias bomb grows
tenfold per level), holds a number of absurd length or a NUL character. Every refusal is an error of the
caller's family (a subclass of :class:`~unveil.errors.UnveilError`) naming the file and the limit.

>>> load_yaml_text("a: [1, 2]", "inline")
{'a': [1, 2]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from unveil.errors import UnveilError

#: The largest document file read (bytes); the project's own files are a few kilobytes.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
#: The deepest nesting of mappings/sequences (YAML) or objects/arrays (JSON).
MAX_DEPTH = 32
#: The most alias events (``*name``) in one YAML document.
MAX_ALIASES = 100
#: The most nodes of a YAML document with every alias expanded.
MAX_NODES = 100_000
#: The longest number literal (characters): 10**400 or a 5000-digit integer is no setting.
MAX_NUMBER_CHARS = 40
#: The largest integer magnitude in a JSON document.
MAX_JSON_INTEGER = 2**63

_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class DocumentError(UnveilError, ValueError):
    """A YAML or JSON document is too large, too deep, too expanding or holds an unusable value."""


def read_document_text(path: str | Path, error: type[UnveilError] = DocumentError, what: str = "file") -> str:
    """The UTF-8 text of ``path``, refused by its size before it is read (``error`` names the file)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise error(f"{path}: {what} is {size} bytes, over the limit of {MAX_DOCUMENT_BYTES} bytes")
        with path.open("rb") as handle:
            data = handle.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or type(exc).__name__})") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise error(f"{path}: {what} is over the limit of {MAX_DOCUMENT_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None


class BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that composes within limits: depth, alias count, expanded node count, number length, NUL."""

    def __init__(self, stream: str, origin: str, error: type[UnveilError]) -> None:
        super().__init__(stream)
        self.origin, self.error = origin, error
        self._depth = self._aliases = self._expanded = 0
        self._sizes: dict[str, int] = {}

    def _refuse(self, problem: str) -> None:
        raise self.error(f"{self.origin}: {problem}")

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        """Compose one node, counting it (an alias counts as the whole node it repeats)."""
        if self.check_event(yaml.AliasEvent):
            anchor = self.peek_event().anchor
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                self._refuse(f"more than {MAX_ALIASES} YAML aliases (limit of the document reader)")
            if anchor in self.anchors and anchor not in self._sizes:
                self._refuse(f"YAML alias *{anchor} refers to a node that contains it (a recursive document)")
            self._count(self._sizes.get(anchor, 1))
            return super().compose_node(parent, index)
        anchor = self.peek_event().anchor
        self._depth += 1
        if self._depth > MAX_DEPTH:
            self._refuse(f"nested deeper than {MAX_DEPTH} levels (limit of the document reader)")
        start = self._expanded
        self._count(1)
        node = super().compose_node(parent, index)
        self._depth -= 1
        _check_scalar(node, self._refuse)
        if anchor is not None:
            self._sizes[anchor] = self._expanded - start
        return node

    def _count(self, nodes: int) -> None:
        self._expanded += nodes
        if self._expanded > MAX_NODES:
            self._refuse(f"expands to more than {MAX_NODES} YAML nodes (aliases repeat their node; "
                         "limit of the document reader)")


def _check_scalar(node: yaml.Node, refuse: Any) -> None:
    """Refuse a number literal of absurd length and any text holding a NUL character."""
    if not isinstance(node, yaml.ScalarNode):
        return
    value = node.value
    if "\x00" in value:
        refuse(f"line {node.start_mark.line + 1}: a value holds a NUL character")
    if node.tag in _NUMBER_TAGS and len(value) > MAX_NUMBER_CHARS:
        refuse(f"line {node.start_mark.line + 1}: a number of {len(value)} characters (limit {MAX_NUMBER_CHARS})")


def compose_yaml(text: str, origin: str, error: type[UnveilError] = DocumentError
                 ) -> tuple[yaml.Node | None, BoundedLoader]:
    """The node tree of one YAML document within the limits, and its loader (to construct, then dispose)."""
    loader = BoundedLoader(text, origin, error)
    try:
        return loader.get_single_node(), loader
    except yaml.YAMLError as exc:
        loader.dispose()
        raise error(f"{origin}: not valid YAML ({' '.join(str(exc).split())})") from None
    except UnveilError:
        loader.dispose()
        raise


def load_yaml_text(text: str, origin: str, error: type[UnveilError] = DocumentError) -> Any:
    """The Python value of one YAML document held in ``text`` (``origin`` names it in errors)."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise error(f"{origin}: {len(text)} characters, over the limit of {MAX_DOCUMENT_BYTES}")
    root, loader = compose_yaml(text, origin, error)
    try:
        return None if root is None else loader.construct_document(root)
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        raise error(f"{origin}: unusable YAML value ({' '.join(str(exc).split())})") from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path, error: type[UnveilError] = DocumentError, what: str = "YAML file") -> Any:
    """The Python value of the YAML file ``path``, size-capped before reading and bounded while parsing."""
    return load_yaml_text(read_document_text(path, error, what), str(path), error)


def json_depth(text: str) -> int:
    """The deepest nesting of objects/arrays in JSON ``text`` (brackets inside strings ignored), in one pass."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def load_json(path: str | Path, error: type[UnveilError] = DocumentError, what: str = "JSON file",
              expect: type = dict) -> Any:
    """The value of the JSON file ``path``: size, nesting depth and integer sizes checked, top level ``expect``."""
    text = read_document_text(path, error, what)
    if json_depth(text) > MAX_DEPTH:
        raise error(f"{path}: {what} is nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer over Python's digit limit
        raise error(f"{path}: unreadable {what} ({' '.join(str(exc).split())})") from None
    if not isinstance(value, expect):
        raise error(f"{path}: {what} must hold a JSON {'object' if expect is dict else expect.__name__}, "
                    f"got {type(value).__name__}")
    _check_json_numbers(value, (), path, error)
    return value


def _check_json_numbers(value: Any, where: tuple[str, ...], path: str | Path, error: type[UnveilError]) -> None:
    """Refuse an integer beyond :data:`MAX_JSON_INTEGER` in magnitude, naming its field (dotted)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_json_numbers(item, (*where, str(key)), path, error)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_numbers(item, (*where, str(index)), path, error)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_JSON_INTEGER:
        field = ".".join(p if p.isidentifier() or p.isdigit() else repr(p) for p in where) or "(top level)"
        raise error(f"{path}: field {field} is an integer of {len(str(abs(value)))} digits, "
                    f"beyond {MAX_JSON_INTEGER:.3g} (a number no setting needs)")
