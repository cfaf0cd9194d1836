"""Read a spec file: safe YAML that remembers where every value came from, and `extends:` merging.

Nothing in a spec is executed: only plain YAML types are built, and any tag that would construct an
object (`!!python/object`, custom `!tags`) is refused with its line. Duplicate keys are refused too
(PyYAML would silently keep the last one, hiding e.g. a duplicated target name).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Path_ = tuple[str | int, ...]
PLAIN_TAGS = {
    "tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, located in its file."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


@dataclass
class SourceMap:
    """Where each dotted path of the merged document was written (file, 1-based line)."""

    entries: dict[Path_, tuple[str, int]] = field(default_factory=dict)
    root_file: str = ""

    def locate(self, path: Path_) -> tuple[str, int]:
        """The closest recorded position: the path itself, else its nearest written parent."""
        for n in range(len(path), -1, -1):
            if path[:n] in self.entries:
                return self.entries[path[:n]]
        return (self.root_file, 0)


class _Builder:
    """Turns a composed YAML node tree into plain Python data, recording positions and refusing tags."""

    def __init__(self, file: str):
        self.file = file
        self.constructor = SafeConstructor()
        self.positions: dict[Path_, tuple[str, int]] = {}
        self.problems: list[Problem] = []

    def build(self, node: Node, path: Path_) -> Any:
        self.positions[path] = (self.file, node.start_mark.line + 1)
        if node.tag not in PLAIN_TAGS:
            self.problems.append(
                Problem(
                    self.file,
                    node.start_mark.line + 1,
                    dotted(path),
                    f"YAML tag '{node.tag}' is not allowed (got a tagged value; expected plain YAML: "
                    "nothing in a spec is executed or constructed)",
                )
            )
            return None
        if isinstance(node, MappingNode):
            result: dict[str, Any] = {}
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = (
                    self.constructor.construct_object(key_node) if isinstance(key_node, ScalarNode) else None
                )
                if not isinstance(key, (str, int, float, bool)) or key_node.tag not in PLAIN_TAGS:
                    self.problems.append(
                        Problem(
                            self.file,
                            key_node.start_mark.line + 1,
                            dotted(path),
                            "mapping keys must be plain scalars",
                        )
                    )
                    continue
                key = str(key)
                if key in seen:
                    self.problems.append(
                        Problem(
                            self.file,
                            key_node.start_mark.line + 1,
                            dotted((*path, key)),
                            f"duplicate key '{key}' (first defined on line {seen[key]}; expected each key once)",
                        )
                    )
                    continue
                seen[key] = key_node.start_mark.line + 1
                result[key] = self.build(value_node, (*path, key))
                self.positions[(*path, key)] = (self.file, key_node.start_mark.line + 1)
            return result
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        value = self.constructor.construct_object(node)
        if node.tag == "tag:yaml.org,2002:timestamp":
            return node.value  # keep dates as written; no field takes a date
        return value


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read_yaml(file: Path) -> tuple[Any, dict[Path_, tuple[str, int]], list[Problem]]:
    """Parse one YAML file into plain data plus its positions; syntax errors become Problems."""
    name = str(file)
    try:
        text = file.read_text()
    except FileNotFoundError:
        return None, {}, [Problem(name, 0, "", "file not found (expected a path to a spec YAML file)")]
    except OSError as exc:
        return None, {}, [Problem(name, 0, "", f"cannot read file: {exc.strerror}")]
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        return None, {}, [Problem(name, line, "", f"YAML syntax error: {exc.problem or exc}")]
    except yaml.YAMLError as exc:
        return None, {}, [Problem(name, 0, "", f"YAML error: {exc}")]
    if node is None:
        return {}, {}, []
    builder = _Builder(name)
    data = builder.build(node, ())
    return data, builder.positions, builder.problems


def deep_merge(base: Any, override: Any) -> Any:
    """Mappings merge key by key; everything else (lists included) is replaced by the override."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for key, value in override.items():
            merged[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def load_document(file: str | Path, _chain: tuple[Path, ...] = ()) -> tuple[dict, SourceMap, list[Problem]]:
    """Read a spec and everything it extends; positions point into whichever file set each value."""
    file = Path(file)
    resolved = file.resolve()
    data, positions, problems = read_yaml(file)
    source = SourceMap(dict(positions), str(file))
    if problems:
        return {}, source, problems
    if not isinstance(data, dict):
        return (
            {},
            source,
            [Problem(str(file), 1, "", f"a spec must be a YAML mapping (got {type(data).__name__})")],
        )
    parent_ref = data.pop("extends", None)
    if parent_ref is None:
        return data, source, []
    line = positions.get(("extends",), (str(file), 0))[1]
    if not isinstance(parent_ref, str):
        return (
            {},
            source,
            [Problem(str(file), line, "extends", f"must be a relative file path (got {parent_ref!r})")],
        )
    parent = (file.parent / parent_ref).resolve() if not Path(parent_ref).is_absolute() else Path(parent_ref)
    chain = (*_chain, resolved)
    if parent in chain:
        cycle = " -> ".join(p.name for p in (*chain, parent))
        return (
            {},
            source,
            [Problem(str(file), line, "extends", f"extends cycle: {cycle} (expected a chain that ends)")],
        )
    if not parent.is_file():
        return (
            {},
            source,
            [
                Problem(
                    str(file),
                    line,
                    "extends",
                    f"file '{parent_ref}' not found (resolved to {parent}; paths are relative to this spec)",
                )
            ],
        )
    base, base_source, base_problems = load_document(parent, chain)
    if base_problems:
        return {}, source, base_problems
    merged = deep_merge(base, data)
    entries = dict(base_source.entries)
    # A mapping the child wrote replaces positions only for the keys it set; a replaced list or
    # scalar takes the child's positions wholesale.
    for key in positions:
        if key and key in entries and not isinstance(_get(data, key), dict):
            for stale in [k for k in entries if k[: len(key)] == key]:
                del entries[stale]
    entries.update(positions)
    return merged, SourceMap(entries, str(file)), []


def _get(data: Any, path: Path_) -> Any:
    for part in path:
        data = data[part]
    return data
