"""Reports: paired comparisons and best-practice verdicts (findings), figures (plots), report.md (markdown).

Stable API for other commands (``ablate build``)::

    from ablate.report import build_report
    report = build_report(records, "quickstart", metric="lm_loss")
    report.best_trial.key, report.best_trial.overrides, report.best_trial.config
    report.recipe  # what `ablate build` runs: trial, teacher, target, importance, distill, formats
"""

from ablate.report.model import BestTrial, Finding, Report, ReportError, TrialRow
from ablate.report.records import build_report

__all__ = ["BestTrial", "Finding", "Report", "ReportError", "TrialRow", "build_report", "write_report"]


def write_report(report, out_dir):  # noqa: ANN001 - re-exported lazily (matplotlib is imported on use)
    """Write report.md and its PNG figures into ``out_dir``; see :func:`ablate.report.write.write_report`."""
    from ablate.report.write import write_report as _write

    return _write(report, out_dir)
