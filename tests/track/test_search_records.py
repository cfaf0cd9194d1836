"""The records of a search (ablate/track/search_records.py) on SQLite and PostgreSQL."""

from __future__ import annotations

import math

from ablate.track.search_records import CandidateRow


def _row(name: str, score: float | None, rank: int | None, keys: list[str] = ()) -> CandidateRow:
    return CandidateRow(name, {"hidden_size": 48}, 1000, f"prune-{name}", f"eval-{name}", "lm_loss", score,
                        rank, list(keys))  # fmt: skip


def test_candidates_round_trip_in_rank_order_and_replace_earlier_ones(records):
    records.upsert_experiment("e", "name: e", "h")
    records.record_search("e", [_row("stale", 1.0, 1)])
    records.record_search("e", [_row("b", 2.5, 2), _row("failed", None, None), _row("a", 2.0, 1, ["k1"])])
    rows = records.search_candidates("e")
    assert [r.name for r in rows] == ["a", "b", "failed"]  # by rank, unscored last; "stale" is gone
    assert rows[0].trial_keys == ["k1"] and rows[0].shape == {"hidden_size": 48} and rows[2].score is None
    assert not any(r.winner for r in rows)
    records.set_search_winner("e", "b")
    records.set_search_winner("e", "a")  # a later submission's winner replaces the earlier one
    assert [r.name for r in records.search_candidates("e") if r.winner] == ["a"]
    records.set_search_winner("e", None)
    assert not any(r.winner for r in records.search_candidates("e"))


def test_a_nan_score_is_stored_as_unscored(records):
    records.upsert_experiment("e", "name: e", "h")
    records.record_search("e", [_row("x", math.nan, None)])
    assert records.search_candidates("e")[0].score is None
