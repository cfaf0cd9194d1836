"""Hostile and careless spec inputs, each a class of its own: what `ablate validate` must refuse (exit 2,
a located message) or accept (exit 0), never with a traceback, a hang, or unbounded memory.

Each entry writes its files under a folder and returns the spec path to validate, plus the outcome
expected: "refused" (exit 2, and the message must contain `says`), "valid" (exit 0), or "either".
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from ablate.spec.limits import MAX_EXTENDS, MAX_FILE_BYTES, MAX_TRIALS

from .conftest import BASE

Case = tuple[str, str]  # (outcome, substring the message must contain when refused)
Setup = Callable[[Path], Path]
CORPUS: dict[str, tuple[Setup, str, str]] = {}


def case(name: str, outcome: str = "refused", says: str = "") -> Callable[[Setup], Setup]:
    def register(setup: Setup) -> Setup:
        CORPUS[name] = (setup, outcome, says)
        return setup

    return register


def spec(folder: Path, text: str | bytes, name: str = "spec.yaml") -> Path:
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def with_distill(line: str) -> str:
    return BASE.replace("  loss: kld\n", f"  loss: kld\n  {line}\n", 1)


def laughs(levels: int = 9, first: str = "lol") -> str:
    lines = [f"l0: &l0 [{', '.join([first] * 9)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# --- aliases, nesting, merge keys ----------------------------------------------------------------


@case("billion-laughs-top", says="too large")
def _(d: Path) -> Path:
    return spec(d, laughs())


@case("billion-laughs-in-sweep-grid", says="too large")
def _(d: Path) -> Path:
    grid = "".join(
        f"    distill.lr: &g{i} [{', '.join([f'*g{i - 1}' if i else '1e-4'] * 10)}]\n".replace(
            "distill.lr", f"distill.lr{i}" if i else "distill.lr"
        )
        for i in range(8)
    )
    return spec(d, BASE.replace("    distill.loss: [kld, ce]\n", grid))


@case("alias-height-chain", says="nest")  # each alias one level deeper than the last
def _(d: Path) -> Path:
    chain = "".join(f"  a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 200))
    return spec(d, BASE + "description: x\nx:\n  a0: &a0 [1]\n" + chain)


@case("recursive-alias", says="recursive")
def _(d: Path) -> Path:
    return spec(d, BASE + "description: &r [1, *r]\n")


@case("deep-flow-sequences", says="nested too deeply")
def _(d: Path) -> Path:
    return spec(d, BASE + "description: " + "[" * 100_000 + "]" * 100_000 + "\n")


@case("deep-flow-mappings", says="nested too deeply")
def _(d: Path) -> Path:
    return spec(d, "name: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n")


@case("deep-block-sequence-one-line", says="nested too deeply")
def _(d: Path) -> Path:
    return spec(d, BASE + "description:\n  " + "- " * 3000 + "x\n")


@case("deep-block-mappings", says="nested too deeply")
def _(d: Path) -> Path:
    return spec(d, BASE + "x:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 400)) + " " * 400 + "v\n")


@case("merge-key-shared-target", outcome="valid")
def _(d: Path) -> Path:
    return spec(
        d,
        BASE.replace(
            "  width: {hidden_size: 48, intermediate_size: 96}\n",
            "  width: &w {hidden_size: 48, intermediate_size: 96}\n  narrow: {<<: *w, hidden_size: 32}\n",
        ),
    )


@case("merge-key-bomb-into-sweep", says="too large")
def _(d: Path) -> Path:
    keys = "abcdefghi"
    levels = ["  m0: &m0 {" + ", ".join(f"{k}: 1" for k in keys) + "}\n"]
    levels += [f"  m{i}: &m{i} {{" + ", ".join(f"{k}: *m{i - 1}" for k in keys) + "}\n" for i in range(1, 9)]
    return spec(d, BASE.replace("sweep:\n", "x:\n" + "".join(levels) + "sweep:\n  <<: *m8\n"))


@case("merge-key-of-a-scalar", says="merge key")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("sweep:\n", "sweep:\n  <<: 5\n"))


@case("complex-key", says="plain scalars")
def _(d: Path) -> Path:
    return spec(d, BASE + "? [a, b]\n: 1\n")


@case("binary-set-omap-tags", says="not allowed")
def _(d: Path) -> Path:
    return spec(d, BASE + "description: !!binary aGVsbG8=\nx: !!set {a, b}\ny: !!omap [a: 1]\n")


@case("explicit-tags-on-values-not-of-their-type", says="cannot read")
def _(d: Path) -> Path:
    return spec(
        d,
        BASE.replace("global_batch: 8", "global_batch: !!bool maybe") + "!!int '0x': 1\nx: !!float '1:2:x'\n",
    )


@case("python-tag-in-merge", says="not allowed")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("sweep:\n", "sweep:\n  <<: !!python/object/apply:os.getcwd []\n"))


# --- bytes and files -----------------------------------------------------------------------------


@case("comments-10MB", says="too large")
def _(d: Path) -> Path:
    return spec(d, BASE + ("# " + "x" * 98 + "\n") * 100_000)


@case("comments-just-under-the-limit", outcome="valid")
def _(d: Path) -> Path:
    filler = ("# " + "x" * 98 + "\n") * ((MAX_FILE_BYTES - len(BASE) - 200) // 101)
    return spec(d, BASE + filler)


@case("huge-description-string", outcome="valid")
def _(d: Path) -> Path:
    return spec(d, BASE + "description: " + "x" * (MAX_FILE_BYTES - len(BASE) - 100) + "\n")


@case("huge-key", says="unknown key")
def _(d: Path) -> Path:
    return spec(d, BASE + "k" * 1000 + ": 1\n")  # PyYAML takes keys of up to 1024 characters


@case("utf16-with-bom", says="UTF-16")
def _(d: Path) -> Path:
    return spec(d, BASE.encode("utf-16"))


@case("utf32-with-bom", says="UTF-32")
def _(d: Path) -> Path:
    return spec(d, BASE.encode("utf-32"))


@case("utf8-with-bom", outcome="valid")
def _(d: Path) -> Path:
    return spec(d, b"\xef\xbb\xbf" + BASE.encode())


@case("latin-1", says="not UTF-8")
def _(d: Path) -> Path:
    return spec(d, (BASE + "description: caf\xe9\n").encode("latin-1"))


@case("nul-bytes", says="NUL")
def _(d: Path) -> Path:
    return spec(d, BASE.encode() + b"description: a\0b\n")


@case("control-character", says="control character")
def _(d: Path) -> Path:
    return spec(d, BASE.encode() + b"description: a\x1bb\n")


@case("random-binary", says="spec.yaml")
def _(d: Path) -> Path:
    return spec(d, os.urandom(4096).replace(b"\0", b"\1"))


@case("fifo", says="not a regular file")
def _(d: Path) -> Path:
    os.mkfifo(d / "spec.yaml")
    return d / "spec.yaml"


@case("dev-zero", says="not a regular file")
def _(d: Path) -> Path:
    return Path("/dev/zero")


@case("symlink-to-dev-zero", says="not a regular file")
def _(d: Path) -> Path:
    (d / "spec.yaml").symlink_to("/dev/zero")
    return d / "spec.yaml"


@case("symlink-loop", says="symbolic links")
def _(d: Path) -> Path:
    (d / "a.yaml").symlink_to(d / "spec.yaml")
    (d / "spec.yaml").symlink_to(d / "a.yaml")
    return d / "spec.yaml"


@case("empty-file", says="required field")
def _(d: Path) -> Path:
    return spec(d, "")


@case("scalar-document", says="YAML mapping")
def _(d: Path) -> Path:
    return spec(d, "just a string\n")


@case("two-documents", says="single document")
def _(d: Path) -> Path:
    return spec(d, BASE + "---\n" + BASE)


@case("tab-indentation", says="YAML syntax error")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("  loss: kld", "\tloss: kld"))


@case("impossible-date", outcome="either")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("name: t", "name: 2001-13-45"))


# --- numbers -------------------------------------------------------------------------------------


@case("tokens-1e999999999", says="too large")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("\n  tokens: 2k", "\n  tokens: 1e999999999"))


@case("tokens-1e309", says="too large")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("\n  tokens: 2k", "\n  tokens: 1e309"))


@case("tokens-1e-999999", says="whole number")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("\n  tokens: 2k", "\n  tokens: 1e-999999"))


@case("tokens-100000-nines", says="distill.tokens")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("\n  tokens: 2k", "\n  tokens: " + "9" * 100_000))


@case("tokens-quoted-100000-nines", says="distill.tokens")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("\n  tokens: 2k", '\n  tokens: "' + "9" * 100_000 + '"'))


@case("tokens-arabic-indic-digits", says="not a token count")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("\n  tokens: 2k", "\n  tokens: \u0662\u0660k"))


@case("tokens-fullwidth-digits", says="not a token count")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("\n  tokens: 2k", "\n  tokens: \uff12\uff10k"))


@case("tokens-negative-zero", says="positive")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("\n  tokens: 2k", "\n  tokens: -0.0"))


@case("tokens-float-infinity", says="finite")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("\n  tokens: 2k", "\n  tokens: 1.0e+400"))


@case("nan-in-correction-lr", says="teacher.correction.lr")
def _(d: Path) -> Path:
    return spec(
        d,
        BASE.replace(
            "  model: builtin:tiny-mistral\n",
            "  model: builtin:tiny-mistral\n  correction: {tokens: 2k, lr: .nan}\n",
        ),
    )


@case("inf-shared-gpu", says="resources.shared.gpu")
def _(d: Path) -> Path:
    return spec(d, BASE + "resources: {shared: {gpu: .inf}}\n")


@case("temperature-1e309", says="distill.temperature")
def _(d: Path) -> Path:
    return spec(d, with_distill("temperature: 1e309"))


@case("batch-10-to-the-400", says="distill.global_batch")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("global_batch: 8", "global_batch: 1" + "0" * 400))


@case("octal-and-sexagesimal-ints", outcome="either")
def _(d: Path) -> Path:
    return spec(
        d, BASE.replace("global_batch: 8", "global_batch: 0o10").replace("micro_batch: 4", "micro_batch: 0:4")
    )


@case("seed-beyond-2-to-the-64", says="sweep.seeds")
def _(d: Path) -> Path:
    return spec(d, BASE + "  seeds: [0, 36893488147419103232]\n")


@case("huge-seed-in-a-grid-axis", says="sweep.grid.seed[1]")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("distill.loss: [kld, ce]", "seed: [1, 123456789012345678901234567890]"))


@case("infinity-in-grid", says="finite")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("distill.loss: [kld, ce]", "distill.weight_decay: [0.0, .inf, -.nan]"))


# --- grids ---------------------------------------------------------------------------------------


def _values(n: int, start: int = 1) -> str:
    return "[" + ", ".join(str(i) for i in range(start, start + n)) + "]"


@case("grid-10-to-the-7-over-several-axes", says="max_trials")
def _(d: Path) -> Path:
    axes = "".join(
        f"    distill.{a}: {_values(100)}\n" for a in ("warmup_steps", "checkpoint_every", "eval_every")
    )
    return spec(
        d,
        BASE.replace(
            "    distill.loss: [kld, ce]\n",
            axes
            + "    distill.loss: [kld, ce, scratch, kld+intermediate, kld, ce, scratch, kld+intermediate, kld, ce]\n",
        ),
    )


@case("grid-10-to-the-12-in-a-list-of-grids", says="max_trials")
def _(d: Path) -> Path:
    grid = (
        "{" + ", ".join(f"distill.{a}: {_values(1000)}" for a in ("warmup_steps", "checkpoint_every")) + "}"
    )
    text = BASE.replace(
        "  grid:\n    target: [width, depth]\n    distill.loss: [kld, ce]\n",
        f"  grid:\n    - {grid}\n    - {grid}\n",
    )
    return spec(d, text + f"  max_trials: {MAX_TRIALS}\n")


@case("max-trials-10-to-the-12", says="sweep.max_trials")
def _(d: Path) -> Path:
    return spec(d, BASE + "  max_trials: 1000000000000\n")


@case("largest-grid-allowed", outcome="valid")  # the worst case that is valid: MAX_TRIALS trials
def _(d: Path) -> Path:
    axes = f"    distill.warmup_steps: {_values(MAX_TRIALS // 4, 0)}\n    distill.loss: [kld, ce]\n"
    return spec(d, BASE.replace("    distill.loss: [kld, ce]\n", axes) + f"  max_trials: {MAX_TRIALS}\n")


@case("one-trial-past-the-largest-grid", says=f"the grid makes {MAX_TRIALS + 4} trials")
def _(d: Path) -> Path:
    axes = f"    distill.warmup_steps: {_values(MAX_TRIALS // 4 + 1, 0)}\n    distill.loss: [kld, ce]\n"
    return spec(d, BASE.replace("    distill.loss: [kld, ce]\n", axes) + f"  max_trials: {MAX_TRIALS}\n")


@case("many-excludes-on-a-large-grid", outcome="either")
def _(d: Path) -> Path:
    axes = f"    distill.warmup_steps: {_values(MAX_TRIALS // 4, 0)}\n    distill.loss: [kld, ce]\n"
    rules = "".join(f"    - {{distill.warmup_steps: {i}, distill.loss: ce}}\n" for i in range(600))
    return spec(
        d,
        BASE.replace("    distill.loss: [kld, ce]\n", axes)
        + f"  max_trials: {MAX_TRIALS}\n  exclude:\n"
        + rules,
    )


@case("thousands-of-unknown-targets-and-axes", says="spec.yaml")
def _(d: Path) -> Path:
    targets = "".join(f"  t{i}: {{hidden_sise: {i}}}\n" for i in range(1200))
    axes = "".join(f"    distill.nope{i}: [1]\n" for i in range(1200))
    text = BASE.replace("targets:\n", "targets:\n" + targets).replace("    distill.loss: [kld, ce]\n", axes)
    return spec(d, text)


# --- extends -------------------------------------------------------------------------------------


@case("extends-three-levels", outcome="valid")
def _(d: Path) -> Path:
    spec(d, BASE, "base.yaml")
    (d / "mid").mkdir()
    spec(d / "mid", "extends: ../base.yaml\nname: mid\n", "mid.yaml")
    return spec(d, "extends: mid/mid.yaml\nname: top\ndistill: {lr: 3e-4}\n")


@case("extends-absolute-path", outcome="valid")
def _(d: Path) -> Path:
    base = spec(d, BASE, "base.yaml")
    return spec(d, f"extends: {base}\nname: abs\n")


@case("extends-cycle-of-three", says="extends cycle: spec.yaml -> b.yaml -> c.yaml -> spec.yaml")
def _(d: Path) -> Path:
    spec(d, "extends: c.yaml\nname: b\n", "b.yaml")
    spec(d, "extends: spec.yaml\nname: c\n", "c.yaml")
    return spec(d, "extends: b.yaml\nname: a\n")


@case("extends-itself", says="extends cycle")
def _(d: Path) -> Path:
    return spec(d, "extends: ./spec.yaml\nname: a\n")


@case("extends-chain-too-long", says="too long")
def _(d: Path) -> Path:
    spec(d, BASE, "b0.yaml")
    for i in range(1, MAX_EXTENDS + 5):
        spec(d, f"extends: b{i - 1}.yaml\n", f"b{i}.yaml")
    return spec(d, f"extends: b{MAX_EXTENDS + 4}.yaml\n")


@case("extends-directory", says="is a directory")
def _(d: Path) -> Path:
    (d / "base").mkdir()
    return spec(d, "extends: base\nname: x\n")


@case("extends-dev-zero", says="not a regular file")
def _(d: Path) -> Path:
    return spec(d, "extends: /dev/zero\nname: x\n")


@case("extends-fifo", says="not a regular file")
def _(d: Path) -> Path:
    os.mkfifo(d / "base.yaml")
    return spec(d, "extends: base.yaml\nname: x\n")


@case("extends-symlink-loop", says="symbolic links")
def _(d: Path) -> Path:
    (d / "a.yaml").symlink_to(d / "b.yaml")
    (d / "b.yaml").symlink_to(d / "a.yaml")
    return spec(d, "extends: a.yaml\nname: x\n")


@case("extends-list", says="must be a file path")
def _(d: Path) -> Path:
    return spec(d, "extends: [a.yaml, b.yaml]\nname: x\n")


@case("extends-budget-shared-by-the-chain", says="files it extends")
def _(d: Path) -> Path:
    filler = ("# " + "x" * 98 + "\n") * (MAX_FILE_BYTES // 101 - 50)
    spec(d, BASE + filler, "b0.yaml")
    spec(d, "extends: b0.yaml\n" + filler, "b1.yaml")
    return spec(d, "extends: b1.yaml\n")


@case("extends-laughs-across-files", says="too large")
def _(d: Path) -> Path:
    spec(d, BASE + laughs(4), "base.yaml")
    return spec(d, "extends: base.yaml\n" + laughs(4).replace("l", "m"))


@case("extends-31-files-each-overriding-one-deep-value", says="unknown key 'x'")
def _(d: Path) -> Path:
    spine = "x:\n" + "".join(" " * (i + 1) + f"s{i}:\n" for i in range(58))
    spec(d, BASE + spine + "".join(" " * 59 + f"l{j}: 1\n" for j in range(450)), "b0.yaml")
    for k in range(1, MAX_EXTENDS - 1):
        spec(d, f"extends: b{k - 1}.yaml\n" + spine + " " * 59 + f"l{k}: [{k}]\n", f"b{k}.yaml")
    return spec(d, f"extends: b{MAX_EXTENDS - 2}.yaml\n")


# --- files the spec points at --------------------------------------------------------------------


def _teacher_config(d: Path, content: str) -> Path:
    (d / "config.json").write_text(content)
    return spec(d, BASE.replace("model: builtin:tiny-mistral", "model: some/model\n  config: config.json"))


@case("teacher-config-dev-zero", says="not a regular file")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("model: builtin:tiny-mistral", "model: some/model\n  config: /dev/zero"))


@case("teacher-config-deep-json", says="teacher.config")
def _(d: Path) -> Path:
    return _teacher_config(d, "[" * 200_000 + "]" * 200_000)


@case("teacher-config-zero-heads", says="teacher.config")
def _(d: Path) -> Path:
    config = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 0, "num_hidden_layers": 2}
    return _teacher_config(d, json.dumps(config))


@case("teacher-config-huge-hidden-size", says="teacher.config")
def _(d: Path) -> Path:
    config = {"model_type": "llama", "hidden_size": 10**300, "num_attention_heads": 4, "num_hidden_layers": 2}
    return _teacher_config(d, json.dumps(config))


@case("teacher-name-longer-than-the-os-allows", says="teacher.model")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("model: builtin:tiny-mistral", "model: " + "m" * 3000))


@case("extends-path-with-nul", says="control character")
def _(d: Path) -> Path:
    return spec(d, 'extends: "base\\0.yaml"\nname: x\n')


@case("control-character-escaped-in-a-string", says="control character")
def _(d: Path) -> Path:
    return spec(d, BASE + 'description: "a\\x1b[31mred\\0"\n')


@case("sweeping-the-sweep", says="cannot be swept")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("distill.loss: [kld, ce]", "sweep.max_trials: [1, 2]"))


@case("union-member-names-stay-out-of-paths", says="sweep.grid.distill.lr: invalid value")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("distill.loss: [kld, ce]", "distill.lr: {a: 1}"))


@case("teacher-name-with-nul", says="control character")
def _(d: Path) -> Path:
    return spec(d, BASE.replace("model: builtin:tiny-mistral", 'model: "a\\0b"'))
