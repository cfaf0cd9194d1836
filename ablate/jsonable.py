"""Plain data to JSON, one rule for the records' and the report's rows: datetimes as ISO strings, NaN as
null and infinities as "inf" / "-inf" (JSON has neither), mapping keys as strings."""

from __future__ import annotations

import math
from dataclasses import asdict
from datetime import datetime
from typing import Any


def jsonable(v: Any) -> Any:
    """`v` with every value JSON can hold as itself and the rest converted by the rule above."""
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    return v


class JsonRow:
    """A dataclass whose JSON is its fields, converted by :func:`jsonable`."""

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))  # type: ignore[call-overload]
