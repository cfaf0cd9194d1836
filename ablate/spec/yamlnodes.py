"""Safe, bounded YAML: a loader that counts while it composes, and a builder that makes plain data.

Composition is linear in the text, but an alias repeats a whole block, and aliases of aliases multiply
(a 1.5 KB "billion laughs" file expands to 10^9 values). The loader therefore keeps, for every node
it composes, its expanded size and height, and refuses the first alias or value that takes the
document past MAX_NODES values or MAX_DEPTH levels: before anything is built, with the line at fault.

The builder then turns the (now bounded) node tree into dicts, lists and scalars, recording the line of
every value, refusing tags that would construct objects and duplicate keys, and applying YAML merge
keys (`<<: *defaults`: the anchored mapping's keys, unless the mapping sets them itself).
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.error import Mark
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ablate.spec.limits import MAX_DEPTH, MAX_NODES
from ablate.spec.problems import Path_, Problem, dotted, shorten

YAML_TAG = "tag:yaml.org,2002:"
PLAIN_TAGS = {YAML_TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")}
MERGE_TAG = YAML_TAG + "merge"
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 and DEL, but tab and line ends
MAX_INT_CHARS = 40  # no field holds a number anywhere near 10^40; int() of 10^5 digits is refused by Python


class LimitExceeded(Exception):
    """The document is too large or too deep; raised while composing, before anything is built."""

    def __init__(self, mark: Mark, path: Path_, message: str):
        super().__init__(message)
        self.line = mark.line + 1
        self.path = path
        self.message = message


class BoundedLoader(yaml.SafeLoader):
    """A SafeLoader whose composer counts values as aliases expand them and refuses past the limits."""

    def __init__(self, stream: str, max_nodes: int = MAX_NODES):
        super().__init__(stream)
        self.max_nodes = max_nodes
        self.used = 0  # values composed so far, aliases expanded
        self.depth = 0
        self.path: list[str | int | None] = []
        self.sizes: dict[int, int] = {}  # id(node) -> values it expands to
        self.heights: dict[int, int] = {}  # id(node) -> levels it spans

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self.path.append(index.value if isinstance(index, ScalarNode) else index)
        try:
            if self.check_event(AliasEvent):
                return self._alias(parent, index)
            mark = self.peek_event().start_mark
            if self.depth + 1 > MAX_DEPTH:
                raise LimitExceeded(
                    mark,
                    self._where(),
                    f"nested too deeply (got more than {MAX_DEPTH} levels of mappings and lists; "
                    f"expected at most {MAX_DEPTH})",
                )
            self._count(1, mark, "")
            before = self.used - 1
            self.depth += 1
            node = super().compose_node(parent, index)
            self.depth -= 1
            self.sizes[id(node)] = self.used - before
            self.heights[id(node)] = 1 + max((self.heights[id(c)] for c in _children(node)), default=0)
            return node
        finally:
            self.path.pop()

    def fetch_flow_collection_start(self, TokenClass: type) -> None:
        """The scanner reads ahead over `[[[[...` before the composer sees it: stop it there too."""
        if self.flow_level >= MAX_DEPTH:
            raise LimitExceeded(
                self.get_mark(),
                (),
                f"nested too deeply (got more than {MAX_DEPTH} levels of [ and {{; expected at most {MAX_DEPTH})",
            )
        super().fetch_flow_collection_start(TokenClass)

    def _alias(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        node = self.anchors.get(event.anchor)
        if node is not None:
            if id(node) not in self.sizes:
                raise LimitExceeded(
                    event.start_mark,
                    self._where(),
                    f"alias *{shorten(event.anchor)} is used inside its own anchor (got a recursive "
                    "alias; expected an alias to a block that is already complete)",
                )
            if self.depth + self.heights[id(node)] > MAX_DEPTH:
                raise LimitExceeded(
                    event.start_mark,
                    self._where(),
                    f"alias *{shorten(event.anchor)} nests the document too deeply (got more than "
                    f"{MAX_DEPTH} levels once expanded; expected at most {MAX_DEPTH})",
                )
            self._count(self.sizes[id(node)], event.start_mark, f"alias *{shorten(event.anchor)} ")
        return super().compose_node(parent, index)

    def _count(self, n: int, mark: Mark, what: str) -> None:
        self.used += n
        if self.used > self.max_nodes:
            expanded = " once aliases are expanded" if what else ""
            raise LimitExceeded(
                mark,
                self._where(),
                f"{what}makes the spec too large (got more than {self.max_nodes} values{expanded}; "
                f"expected at most {MAX_NODES} in the spec and the files it extends)",
            )

    def _where(self) -> Path_:
        return tuple(p for p in self.path if p is not None)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return node.value
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


class Builder:
    """Turns a composed YAML node tree into plain Python data, recording positions and refusing tags."""

    def __init__(self, file: str):
        self.file = file
        self.constructor = SafeConstructor()
        self.positions: dict[Path_, tuple[str, int]] = {}
        self.problems: list[Problem] = []

    def problem(self, node: Node, path: Path_, message: str) -> None:
        self.problems.append(Problem(self.file, node.start_mark.line + 1, dotted(path), message))

    def build(self, node: Node, path: Path_) -> Any:
        self.positions[path] = (self.file, node.start_mark.line + 1)
        if node.tag not in PLAIN_TAGS:
            self.problem(
                node,
                path,
                f"YAML tag '{shorten(node.tag)}' is not allowed (got a tagged value; expected plain YAML: "
                "nothing in a spec is executed or constructed)",
            )
            return None
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: ScalarNode, path: Path_) -> Any:
        if node.tag == YAML_TAG + "timestamp":
            return node.value  # kept as written; no field takes a date (and 2001-13-45 would raise)
        if node.tag == YAML_TAG + "int" and len(node.value) > MAX_INT_CHARS:
            self.problem(
                node,
                path,
                f"number too long (got {len(node.value)} characters; expected at most {MAX_INT_CHARS})",
            )
            return None
        try:
            value = self.constructor.construct_object(node)
        except (ValueError, OverflowError, KeyError, IndexError, TypeError, yaml.YAMLError):
            kind = node.tag.removeprefix(YAML_TAG)
            # An explicit tag on a value that is not of its type (!!bool maybe, !!int ''): PyYAML's
            # constructors raise whatever their parsing hits.
            self.problem(
                node,
                path,
                f"cannot read {shorten(repr(node.value))} as {kind} (got a value with an explicit "
                f"!!{kind} tag; expected a {kind}, or no tag)",
            )
            return None
        if isinstance(value, str) and CONTROL.search(value):
            # Written as an escape ("a\0b"): PostgreSQL refuses NUL in text, paths refuse it too.
            self.problem(
                node,
                path,
                f"a control character in text (got {shorten(repr(value))}; expected printable text)",
            )
            return None
        return value

    def _mapping(self, node: MappingNode, path: Path_) -> dict[str, Any]:
        result: dict[str, Any] = {}
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                for key, value in self._merged(value_node, path).items():
                    if key not in seen:
                        result[key] = value
                continue
            key = self._scalar(key_node, path) if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, (str, int, float, bool)) or key_node.tag not in PLAIN_TAGS:
                self.problem(
                    key_node, path, "mapping keys must be plain scalars (got a list, mapping or tagged key)"
                )
                continue
            key = str(key)
            if key in seen:
                self.problem(
                    key_node,
                    (*path, key),
                    f"duplicate key '{shorten(key)}' (first defined on line {seen[key]}; expected each key once)",
                )
                continue
            seen[key] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, (*path, key))
            self.positions[(*path, key)] = (self.file, key_node.start_mark.line + 1)
        return result

    def _merged(self, value_node: Node, path: Path_) -> dict[str, Any]:
        """The keys a merge key brings: `<<: *a` or `<<: [*a, *b]` (an earlier mapping wins)."""
        if value_node.tag not in PLAIN_TAGS:
            self.build(value_node, path)  # refuses the tag, with its line
            return {}
        sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
        own = self.positions[path]
        merged: dict[str, Any] = {}
        for source in reversed(sources):  # earlier sources last, so their values and lines win
            if not isinstance(source, MappingNode):
                self.problem(
                    source,
                    path,
                    "merge key '<<' takes a mapping or a list of mappings (got "
                    f"{'a list' if isinstance(source, SequenceNode) else repr(shorten(str(source.value)))}; "
                    "expected e.g. '<<: *defaults')",
                )
                continue
            built = self.build(source, path)
            if isinstance(built, dict):
                merged.update(built)
        self.positions[path] = own
        return merged
