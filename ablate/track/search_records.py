"""The records of a spec's `search`: every candidate with its one-shot score and rank, which were
retrained (as which trials), and the winner. Mixed into :class:`ablate.track.db.Records`, whose short
transactions (``_write``/``_read``) it uses; the report and ``ablate build`` read it back."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update

from ablate.jsonable import JsonRow
from ablate.track.tables import SearchCandidate, _now


@dataclass(frozen=True)
class CandidateRow(JsonRow):
    """One candidate as the records hold it."""

    name: str
    shape: dict[str, int]
    params: int
    prune_hash: str
    eval_hash: str
    metric: str
    score: float | None  # its one-shot value of `metric`; None when its prune or eval failed
    rank: int | None  # 1 = best one-shot score
    trial_keys: list[str] = field(default_factory=list)  # its retraining trials; empty: not in the top_k
    winner: bool = False


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(float(value)) else float(value)


class SearchRecords:
    """Search operations of :class:`~ablate.track.db.Records`."""

    def record_search(self, experiment: str, rows: Sequence[CandidateRow]) -> None:
        """Store the candidates of `experiment`'s search, replacing what an earlier submission stored (a
        changed budget or space leaves no stale candidate behind)."""
        with self._write() as s:  # type: ignore[attr-defined]
            eid = self._experiment(s, experiment).id  # type: ignore[attr-defined]
            s.query(SearchCandidate).filter(SearchCandidate.experiment_id == eid).delete()
            s.add_all(
                SearchCandidate(
                    experiment_id=eid,
                    **{**row.to_dict(), "score": _number(row.score), "updated_at": _now()},
                )
                for row in rows
            )

    def set_search_winner(self, experiment: str, name: str | None) -> None:
        """Mark `name` the search's winner (None: no retrained candidate finished)."""
        with self._write() as s:  # type: ignore[attr-defined]
            eid = self._experiment(s, experiment).id  # type: ignore[attr-defined]
            where = SearchCandidate.experiment_id == eid
            s.execute(update(SearchCandidate).where(where).values(winner=False))
            if name is not None:
                s.execute(
                    update(SearchCandidate)
                    .where(where, SearchCandidate.name == name)
                    .values(winner=True, updated_at=_now())
                )

    def search_candidates(self, experiment: str) -> list[CandidateRow]:
        """The candidates of `experiment`'s search, best one-shot score first (unscored last)."""
        with self._read() as s:  # type: ignore[attr-defined]
            eid = self._experiment(s, experiment).id  # type: ignore[attr-defined]
            rows = s.scalars(select(SearchCandidate).where(SearchCandidate.experiment_id == eid)).all()
            out = [_row(r) for r in rows]
        return sorted(out, key=lambda r: (r.rank is None, r.rank or 0, r.name))


def _row(r: SearchCandidate) -> CandidateRow:
    values: dict[str, Any] = {f: getattr(r, f) for f in CandidateRow.__dataclass_fields__}
    return CandidateRow(**values)
