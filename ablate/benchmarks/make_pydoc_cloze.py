"""Make the shipped `pydoc_cloze` task: multiple-choice continuations cut from the held-out split of
`builtin:pydoc`, so tests and the quickstart have a benchmark that needs no download.

The held-out split is the quickstart's: SmolLM2's tokenizer, sequences of 128 tokens, 8k eval tokens
(`ablate.data.corpus.token_splits`), so no item's text was ever trained on by a quickstart trial. Each
eval sequence is decoded to words and cut twice (at 40% and 75% of its words): the context is the 24
words before the cut, the right answer the next 6 words, and the three wrong answers are the answers
of three other items drawn with a seeded generator. Deterministic: running this again writes the same
file (tests/benchmarks checks that).

    python -m ablate.benchmarks.make_pydoc_cloze  # rewrites tasks/pydoc_cloze/pydoc_cloze.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TASK_DIR = Path(__file__).parent / "tasks" / "pydoc_cloze"
CONTEXT_WORDS = 24
ANSWER_WORDS = 6
CUTS = (0.4, 0.75)
CHOICES = 4
SEED = 0


def held_out_texts() -> list[str]:
    """The decoded eval sequences of the quickstart's data settings."""
    from ablate.data.corpus import token_splits
    from ablate.models.registry import load_tokenizer

    tokenizer = load_tokenizer("builtin:smollm2-135m")
    splits = token_splits(tokenizer, "builtin:pydoc", 128, 8000, 0)
    return [tokenizer.decode(seq.tolist(), skip_special_tokens=True) for seq in splits.eval]


def items(texts: list[str]) -> list[dict]:
    """Cloze items: context, the true continuation and three others, label = index of the true one."""
    cut: list[tuple[str, str]] = []
    for text in texts:
        words = text.split()
        for fraction in CUTS:
            at = int(len(words) * fraction)
            if at < CONTEXT_WORDS or at + ANSWER_WORDS > len(words):
                continue
            cut.append((" ".join(words[at - CONTEXT_WORDS : at]), " ".join(words[at : at + ANSWER_WORDS])))
    rng = random.Random(SEED)
    out = []
    for i, (context, answer) in enumerate(cut):
        others = [a for j, (_, a) in enumerate(cut) if j != i and a != answer]
        choices = rng.sample(others, CHOICES - 1) + [answer]
        rng.shuffle(choices)
        out.append({"id": i, "context": context, "choices": choices, "label": choices.index(answer)})
    return out


def main() -> None:
    rows = items(held_out_texts())
    path = TASK_DIR / "pydoc_cloze.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(json.dumps({"items": len(rows), "path": str(path)}))


if __name__ == "__main__":
    main()
