"""What the plan says about the data: per source, its share of the blend, the tokens it holds (once
tokenized: read from its shard index, nothing loaded) and how many times the largest training budget
will go through it, with a warning for each source that repeats.

Megatron users read the same from the blended dataset's log; here it comes before anything runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _tokenizer_fingerprint(teacher_ref: str) -> str | None:
    try:
        from ablate.data.corpus import tokenizer_fingerprint
        from ablate.models.registry import load_tokenizer

        return tokenizer_fingerprint(load_tokenizer(teacher_ref))
    except Exception as exc:  # noqa: BLE001 - the plan still shows the shares without token counts
        log.debug("no tokenizer for the data plan: %s", exc)
        return None


def _tokens_held(source: Any, tokenizer_fp: str | None, seq_len: int) -> int | None:
    """Tokens in the source's finished shards; None when it was not tokenized (or cannot be read) yet."""
    from ablate.data.prepare import is_shard_folder, shards_root
    from ablate.data.shards import read_index, shard_key
    from ablate.data.sources import fingerprint

    try:
        if is_shard_folder(source.path):
            folder = Path(source.path).expanduser()
        elif tokenizer_fp is None:
            return None
        else:
            folder = shards_root() / shard_key(fingerprint(source), tokenizer_fp, seq_len)
        index = read_index(folder)
    except Exception as exc:  # noqa: BLE001 - e.g. a hub source while offline
        log.debug("cannot read the shards of %s: %s", source.path, exc)
        return None
    if not index or not index.get("complete"):
        return None
    return sum(int(s["tokens"]) for s in index["shards"])


def data_plan(loaded: Any) -> dict[str, Any]:
    """{"sources": [...], "budget_tokens": n, "warnings": [...]} for the spec's data section."""
    from ablate.data.sources import sources_of
    from ablate.spec.validate import resolve_relative

    spec = loaded.spec
    data = spec.data.model_dump(mode="json")
    sources = sources_of(data, loaded.path.parent)
    trials = loaded.trials or []
    budget = max([t.spec.distill.tokens for t in trials] or [spec.distill.tokens])
    correction = spec.teacher.correction.tokens if spec.teacher.correction else 0
    total_weight = sum(s.weight for s in sources)
    tokenizer_fp = _tokenizer_fingerprint(resolve_relative(loaded.path, spec.teacher.model))
    held_out = data["eval_tokens"] + spec.calibration.samples * data["seq_len"]
    rows, warnings = [], []
    for source in sources:
        share = source.weight / total_weight
        held = _tokens_held(source, tokenizer_fp, data["seq_len"])
        train = max(0, held - round(held_out * share)) if held is not None else None
        need = round((budget + correction) * share)
        epochs = need / train if train else None
        rows.append(
            {"path": source.path, "weight": source.weight, "share": share, "tokens": held,
             "train_tokens": train, "budget_tokens": need, "epochs": epochs}
        )  # fmt: skip
        if epochs is not None and epochs > 1:
            warnings.append(
                f"data source {source.path} holds {train:,} training tokens but its share of the budget is "
                f"{need:,} (distill.tokens"
                + (" + teacher.correction.tokens" if correction else "")
                + f"): it repeats {epochs:.1f} times; add data or lower its weight"
            )
    return {"sources": rows, "budget_tokens": budget + correction, "warnings": warnings}
