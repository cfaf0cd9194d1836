"""Errors a user can fix. The CLI prints their message (no traceback) and exits 2."""


class AblateError(Exception):
    """Base class: the message must name what was wrong and how to fix it."""


class SpecError(AblateError):
    """The spec is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class ModelError(AblateError):
    """A model reference cannot be resolved, loaded or is an unsupported family."""


class DataError(AblateError):
    """A corpus cannot be read or is too small for what was asked."""


class PruneError(AblateError):
    """A pruning target cannot be applied to this model."""


class TrainError(AblateError):
    """Distillation cannot start or had to stop (non-finite loss, bad budget, mismatched models)."""


class RunError(AblateError):
    """The executor or the records cannot proceed."""


class WriteError(AblateError):
    """A file could not be written where ablate keeps its results (a full disk, above all)."""
