"""Read a spec file: safe, bounded YAML that remembers where every value came from, and `extends:`.

Nothing in a spec is executed: only plain YAML types are built, and any tag that would construct an
object (`!!python/object`, custom `!tags`) is refused with its line. Duplicate keys are refused too
(PyYAML would silently keep the last one, hiding e.g. a duplicated target name). A spec and the chain
of files it extends share one budget of bytes and values (spec/limits.py), so no file, alias or chain
can make validation slow or large.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ablate.spec.limits import MAX_EXTENDS, MAX_FILE_BYTES, MAX_NODES
from ablate.spec.problems import Path_, Problem, dotted, shorten
from ablate.spec.textfile import UnreadableFile, check_file, read_text
from ablate.spec.yamlnodes import BoundedLoader, Builder, LimitExceeded

__all__ = ["Path_", "Problem", "SourceMap", "dotted", "load_document", "read_yaml"]
EXPECTED_FILE = "a spec YAML file"


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


@dataclass
class Budget:
    """What is left for the rest of an extends chain: bytes to read and values to build."""

    bytes: int = MAX_FILE_BYTES
    nodes: int = MAX_NODES


def recorded_mapping(text: str) -> dict[str, Any]:
    """The top-level mapping of a spec text the records keep; {} when it no longer parses as one, so a
    report or a build of old records never fails on it (what it needs falls back to defaults)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def read_yaml(
    file: Path, budget: Budget | None = None
) -> tuple[Any, dict[Path_, tuple[str, int]], list[Problem]]:
    """Parse one YAML file into plain data plus its positions; every failure becomes a Problem."""
    budget = budget or Budget()
    name = str(file)
    try:
        text = read_text(file, budget.bytes, EXPECTED_FILE, _shared_note(budget))
    except UnreadableFile as exc:
        return None, {}, [Problem(name, exc.line, "", exc.message)]
    budget.bytes -= len(text.encode())
    loader = None
    try:
        loader = BoundedLoader(text, budget.nodes)
        node = loader.get_single_node()
    except LimitExceeded as exc:
        return None, {}, [Problem(name, exc.line, dotted(exc.path), exc.message)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        return None, {}, [Problem(name, line, "", f"YAML syntax error: {shorten(_syntax(exc), 300)}")]
    except yaml.reader.ReaderError as exc:  # a control character: report its line
        line = text.count("\n", 0, exc.position) + 1
        return (
            None,
            {},
            [
                Problem(
                    name,
                    line,
                    "",
                    f"not a YAML text file (got the control character #x{exc.character:04x}; "
                    "expected printable text)",
                )
            ],
        )
    except yaml.YAMLError as exc:
        return None, {}, [Problem(name, 0, "", f"YAML error: {shorten(str(exc), 300)}")]
    finally:
        if loader is not None:
            loader.dispose()
    budget.nodes -= loader.used
    if node is None:
        return {}, {}, []
    builder = Builder(name)
    data = builder.build(node, ())
    return data, builder.positions, builder.problems


def _syntax(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's context and problem as one sentence: 'while parsing a flow sequence on line 3;
    expected ',' or ']', but got '<stream end>'."""
    parts = []
    if exc.context:
        on = f" on line {exc.context_mark.line + 1}" if exc.context_mark and exc.problem else ""
        parts.append(f"{exc.context}{on}")
    if exc.problem:
        parts.append(exc.problem)
    return "; ".join(parts) or str(exc)


def _shared_note(budget: Budget) -> str:
    left = budget.bytes < MAX_FILE_BYTES
    return f", what is left of {MAX_FILE_BYTES} for a spec and the files it extends" if left else ""


@dataclass
class _Link:
    """One file of an extends chain, its own data (without `extends`) and positions."""

    file: Path
    data: dict
    positions: dict[Path_, tuple[str, int]]


def load_document(file: str | Path) -> tuple[dict, SourceMap, list[Problem]]:
    """Read a spec and every file it extends, at any depth; positions point into whichever file set
    each value. Relative `extends:` paths are relative to the file that says them."""
    file = Path(file)
    budget = Budget()
    chain: list[_Link] = []
    current = file
    while True:
        data, positions, problems = read_yaml(current, budget)
        if problems:
            return {}, SourceMap(positions, str(file)), problems
        if not isinstance(data, dict):
            kind = "null" if data is None else type(data).__name__
            return (
                {},
                SourceMap({}, str(file)),
                [
                    Problem(
                        str(current),
                        1,
                        "",
                        f"a spec must be a YAML mapping (got {kind}; expected keys such as name:)",
                    )
                ],
            )
        ref = data.pop("extends", None)
        where = positions.pop(("extends",), (str(current), 0))
        chain.append(_Link(current, data, positions))
        if ref is None:
            break
        parent, problem = _parent(ref, chain, where, budget)
        if problem:
            return {}, SourceMap({}, str(file)), [problem]
        current = parent
    merged, entries = chain[-1].data, dict(chain[-1].positions)
    for link in reversed(chain[:-1]):
        entries = _merge_positions(entries, merged, link)
        merged = _merge_into(merged, link.data)
    return merged, SourceMap(entries, str(file)), []


def _parent(
    ref: Any, chain: list[_Link], where: tuple[str, int], budget: Budget
) -> tuple[Path, Problem | None]:
    """The file `extends: ref` names, or the Problem that stops the chain there."""
    child = chain[-1].file

    def refuse(message: str) -> tuple[Path, Problem]:
        return child, Problem(where[0], where[1], "extends", message)

    if not isinstance(ref, str) or not ref.strip():
        return refuse(
            f"must be a file path (got {shorten(repr(ref))}; expected e.g. extends: base.yaml, "
            "relative to this spec's folder, or an absolute path)"
        )
    parent = child.parent / ref  # an absolute ref replaces the folder
    try:
        resolved = parent.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop or a NUL: checking it below says so
        resolved = parent.absolute()
    seen = [link.file.resolve() for link in chain]
    if resolved in seen:
        names = [p.name for p in seen]
        shown = names if len(set(names)) == len(names) else [str(p) for p in seen]
        cycle = " -> ".join([*shown, shown[seen.index(resolved)]])
        return refuse(f"extends cycle: {cycle} (expected a chain that ends in a spec without extends)")
    if len(chain) >= MAX_EXTENDS:
        return refuse(
            f"extends chain too long (got more than {MAX_EXTENDS} files; expected at most {MAX_EXTENDS})"
        )
    try:
        check_file(parent, budget.bytes, EXPECTED_FILE, _shared_note(budget))
    except UnreadableFile as exc:
        if exc.message.startswith("file not found"):
            relative = "" if Path(ref).is_absolute() else ", relative to this spec's folder"
            return refuse(
                f"file '{shorten(ref, 300)}' not found (resolved to {shorten(str(resolved), 300)}; expected {EXPECTED_FILE}{relative})"
            )
        return refuse(f"'{shorten(ref, 300)}' (resolved to {shorten(str(resolved), 300)}): {exc.message}")
    return parent, None


def _merge_into(base: dict, override: dict) -> dict:
    """Mappings merge key by key, anything else (lists included) is replaced by the override. In place,
    without copies: both come fresh from the YAML builder and share nothing."""
    for key, value in override.items():
        if key in base and isinstance(base[key], dict) and isinstance(value, dict):
            _merge_into(base[key], value)
        else:
            base[key] = value
    return base


def _merge_positions(
    entries: dict[Path_, tuple[str, int]], base: dict, link: _Link
) -> dict[Path_, tuple[str, int]]:
    """Positions after `link` overrides `base`: a mapping the child wrote keeps the base's positions of
    the keys it does not set; a replaced list or scalar takes the child's positions wholesale."""
    replaced: set[Path_] = set()
    _replaced_paths(base, link.data, (), replaced)
    kept = {
        path: where
        for path, where in entries.items()
        if not any(path[:n] in replaced for n in range(1, len(path) + 1))
    }
    kept.update(link.positions)
    return kept


def _replaced_paths(base: dict, override: dict, path: Path_, out: set[Path_]) -> None:
    for key, value in override.items():
        if key in base and isinstance(base[key], dict) and isinstance(value, dict):
            _replaced_paths(base[key], value, (*path, key), out)
        else:
            out.add((*path, key))
