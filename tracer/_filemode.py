"""File modes of atomically written files.

``tempfile.mkstemp`` creates its file 0600, so a temp-file-then-rename write would leave reports,
TREC runs and JSON-lines files unreadable to anyone else. Writers call :func:`make_public`
on the temp file before the rename, giving it the mode ``open()`` would have: ``0o666 & ~umask``.
"""

from __future__ import annotations

import os

__all__ = ["default_file_mode", "make_public"]

# Mode of a new file before the umask applies (what open() asks for).
NEW_FILE_MODE = 0o666
# Where Linux shows the process umask without changing it.
PROC_STATUS = "/proc/self/status"


def default_file_mode() -> int:
    """``0o666 & ~umask``: the mode a plain ``open(path, "w")`` gives a new file."""
    try:
        with open(PROC_STATUS, encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return NEW_FILE_MODE & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no other way to read it; restored at once
    os.umask(mask)
    return NEW_FILE_MODE & ~mask


def make_public(fd_or_path: int | str | os.PathLike[str]) -> None:
    """Give a file made by ``mkstemp`` (an open descriptor or a path) the mode of an ordinary new file."""
    mode = default_file_mode()
    if isinstance(fd_or_path, int):
        os.fchmod(fd_or_path, mode)
    else:
        os.chmod(fd_or_path, mode)
