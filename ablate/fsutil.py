"""Writing a folder so that readers see the old one or the new one, never half of either."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_dir(out: Path, before_publish: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield an empty sibling temp folder; on success it replaces `out` by rename, on failure it is removed.

    `before_publish` runs just before the swap (e.g. to re-check that `out` may be replaced).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if before_publish is not None:
            before_publish()
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(trash / out.name)
            tmp.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
