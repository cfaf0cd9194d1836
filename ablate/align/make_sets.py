"""Make the shipped alignment sets, `builtin:pydoc-instruct` (chat messages for SFT) and
`builtin:pydoc-prefs` (prompt/chosen/rejected pairs for DPO), from Python's own reference documentation
(`pydoc_data.topics`, part of the standard library), so tests and the quickstart-sized alignment
example need no download.

Each topic's prose paragraphs (code blocks and headings dropped, each cut to PARAGRAPH_CHARS at a word
boundary, a quoted passage to PASSAGE_CHARS) give:
- instructions: "what does the reference say about TITLE?" answered by its first paragraph, and
  "what comes after this passage?" answered by the next paragraph (up to CONTINUATIONS per topic);
- preferences: the continuation prompts, `chosen` the true next paragraph; `rejected` alternates between
  a paragraph of another topic (off-topic) and the true paragraph with its words shuffled (disfluent),
  both drawn with `random.Random(SEED)`.

Deterministic for a given Python (the topics change between Python versions; the shipped files were made
with the version in data/README.md):

    python -m ablate.align.make_sets  # rewrites ablate/align/data/*.jsonl
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
INSTRUCT_FILE = DATA_DIR / "pydoc_instruct.jsonl"
PREFS_FILE = DATA_DIR / "pydoc_prefs.jsonl"
PARAGRAPH_CHARS = 280
PASSAGE_CHARS = 200  # the passage a continuation prompt quotes
MIN_PARAGRAPH_CHARS = 80
CONTINUATIONS = 3
SEED = 0


def _cut(text: str, limit: int = PARAGRAPH_CHARS) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."


def topic_paragraphs() -> list[tuple[str, list[str]]]:
    """(title, prose paragraphs) of every reference topic, in name order."""
    import pydoc_data.topics

    out = []
    for name in sorted(pydoc_data.topics.topics):
        text = pydoc_data.topics.topics[name]
        blocks = [b for b in text.split("\n\n") if b.strip()]
        title = blocks[0].splitlines()[0].strip() if blocks else name
        prose = [
            _cut(b)
            for b in blocks[1:]
            if not b.startswith("   ")  # code and grammar blocks are indented
            and not re.fullmatch(r"[*=\-~^]+", b.strip().splitlines()[-1])  # headings
            and len(" ".join(b.split())) >= MIN_PARAGRAPH_CHARS
        ]
        if len(prose) >= 2:
            out.append((title, prose))
    return out


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def continuation_prompt(title: str, passage: str) -> str:
    return f'From the Python reference section "{title}": what comes after this passage?\n\n{_cut(passage, PASSAGE_CHARS)}'


def build_sets() -> tuple[list[dict], list[dict]]:
    rng = random.Random(SEED)
    topics = topic_paragraphs()
    instruct: list[dict] = []
    prefs: list[dict] = []
    for t, (title, prose) in enumerate(topics):
        instruct.append(
            {
                "id": f"about-{t}",
                "messages": _user(f'What does the Python reference say about "{title}"?')
                + _assistant(prose[0]),
            }
        )
        for i in range(min(CONTINUATIONS, len(prose) - 1)):
            prompt = continuation_prompt(title, prose[i])
            instruct.append({"id": f"next-{t}-{i}", "messages": _user(prompt) + _assistant(prose[i + 1])})
            if len(prefs) % 2 == 0:  # off-topic: a paragraph of another topic
                other = rng.choice([p for j, (_, ps) in enumerate(topics) if j != t for p in ps[:2]])
                kind, rejected = "off-topic", other
            else:  # disfluent: the right words in a shuffled order
                words = prose[i + 1].split()
                rng.shuffle(words)
                kind, rejected = "shuffled", " ".join(words)
            prefs.append(
                {
                    "id": f"pref-{t}-{i}",
                    "kind": kind,
                    "prompt": _user(prompt),
                    "chosen": _assistant(prose[i + 1]),
                    "rejected": _assistant(rejected),
                }
            )
    return instruct, prefs


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))


def main() -> None:
    instruct, prefs = build_sets()
    write_jsonl(INSTRUCT_FILE, instruct)
    write_jsonl(PREFS_FILE, prefs)
    print(
        f"{len(instruct)} instructions -> {INSTRUCT_FILE}, {len(prefs)} preference pairs -> {PREFS_FILE} "
        f"(Python {sys.version_info.major}.{sys.version_info.minor})"
    )


if __name__ == "__main__":
    main()
