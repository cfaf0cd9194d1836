"""Spec schema, loading, validation and sweep expansion."""

# schema first: it imports spec.search part-way (search's retraining overrides are schema's Distill
# fields), which works only when schema starts the cycle, whichever module of the package is asked for.
from ablate.spec import schema as _schema  # noqa: F401
