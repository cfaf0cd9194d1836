"""The report's search section (ablate/report/search.py): rank correlation against hand-computed
values, and what it says with too few retrained candidates."""

from __future__ import annotations

import pytest

from ablate.report.search import rank_correlation, search_section


def test_rank_correlation_matches_hand_computed_values():
    # ranks (1,2,3,4) vs (2,1,3,4): one discordant pair of 6 -> tau = (5 - 1) / 6; rho = 1 - 6*2/(4*15)
    corr = rank_correlation([1, 2, 3, 4], [2, 1, 3, 4])
    assert corr["kendall"] == pytest.approx(4 / 6) and corr["spearman"] == pytest.approx(1 - 12 / 60)
    assert rank_correlation([1, 2, 3], [3, 2, 1])["kendall"] == pytest.approx(-1.0)
    assert rank_correlation([1, 2], [2, 1])["spearman"] is None  # two ranks always correlate at +-1


def test_section_names_the_winner_and_whether_one_shot_agreed():
    candidates = [
        {"name": "a", "rank": 1, "params": 10, "score": 1.0, "retrained": 0.9, "seeds": 2, "winner": False,
         "retrained_rank": 2},
        {"name": "b", "rank": 2, "params": 9, "score": 1.1, "retrained": 0.8, "seeds": 2, "winner": True,
         "retrained_rank": 1},
        {"name": "c", "rank": 3, "params": 9, "score": 1.2, "retrained": None, "seeds": 0, "winner": False},
    ]  # fmt: skip
    search = {"metric": "lm_loss", "score_metric": "lm_loss", "candidates": candidates, "one_shot_best": "a",
              "winner": "b", "correlation": rank_correlation([1, 2], [2, 1])}  # fmt: skip
    text = "\n".join(search_section(search))
    assert "| 2 | **b** (winner) | 9 | 1.1000 | 0.8000 | 2 | 1 |" in text
    assert "| 3 | c | 9 | 1.2000 | - | - | - |" in text
    assert "not estimated (2 retrained candidate(s)" in text
    assert "The one-shot best (a) is not the retrained winner (b)." in text
    assert search_section({}) == []
