"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Used by everything that writes a file others read while it may be replaced: the bank (manifest last),
the embedding cache (keys last), collected records.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write via a temporary file in the same folder (".<name>.*.tmp"), synced, then renamed over `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    # mkstemp makes the file 0600: a bank written so was unreadable by a container's own user (issue 23). The
    # files written here are shared data (banks, caches, records), readable by all, as open() would make them.
    os.fchmod(fd, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())  # so a power loss cannot leave a renamed but empty file
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
