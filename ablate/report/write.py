"""Writing a report: report.md and its PNGs into a folder, each file replaced atomically and only when its
bytes changed, everything rendered before the first file is written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ablate.report.markdown import REPORT_MD, render_markdown
from ablate.report.model import Report
from ablate.report.plots import FINDING_PREFIX, render_plots
from ablate.secrets import redact_text


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: Report, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write report.md and its PNGs into ``out_dir`` (created); returns the paths written, report.md first.

    Everything is rendered before the first file is written, so an error leaves no partial report.
    """

    files = {REPORT_MD: redact_text(render_markdown(report)).encode()}  # no spec password in the report
    files.update(render_plots(report))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        path = out / name
        if not path.exists() or path.read_bytes() != data:
            _atomic_write(path, data)
        written.append(path)
    for old in out.glob(f"{FINDING_PREFIX}*.png"):
        if old.name not in files:
            old.unlink()
    return written
