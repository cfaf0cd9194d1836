"""Read a small text file a user points at (a spec, a base it extends, a teacher config.json) without
ever blocking or reading without bound: `/dev/zero`, a FIFO, a directory, a 10 GB file or a binary one
are refused with the reason, before or instead of being read.
"""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path

KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}
BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


class UnreadableFile(Exception):
    """Why a file cannot be used, with the 1-based line at fault (0: the file as a whole)."""

    def __init__(self, message: str, line: int = 0):
        super().__init__(message)
        self.message = message
        self.line = line


def check_file(path: Path, limit: int, expected: str = "a YAML text file", note: str = "") -> None:
    """Refuse, without opening it, a path that is missing, not a regular file, or over `limit` bytes."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UnreadableFile(f"file not found (expected {expected})") from None
    except OSError as exc:
        raise UnreadableFile(f"cannot read file: {exc.strerror or exc}") from None
    except ValueError:  # os.stat refuses a path with a NUL character
        raise UnreadableFile(f"not a usable path (got a NUL character; expected {expected})") from None
    _check_kind(info, expected)
    _check_size(info.st_size, limit, True, note)


def read_text(path: Path, limit: int, expected: str = "a YAML text file", note: str = "") -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes; raise UnreadableFile otherwise.

    The kind and size are checked with stat before the file is opened (opening a FIFO would block),
    again on the open descriptor (the path may have changed), and at most limit+1 bytes are read.
    """
    check_file(path, limit, expected, note)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UnreadableFile(f"cannot read file: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        _check_kind(info, expected)
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise UnreadableFile(f"cannot read file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    _check_size(len(data), limit, False, note)  # /proc and the like report size 0
    return decode(data, expected)


def decode(data: bytes, expected: str = "a YAML text file") -> str:
    """UTF-8 text, or UnreadableFile naming the line of the first byte that is not."""
    for bom, name in BOMS:
        if data.startswith(bom):
            raise UnreadableFile(
                f"the file is {name} text (got a {name} byte-order mark; expected UTF-8: save it as UTF-8)", 1
            )
    nul = data.find(b"\0")
    if nul >= 0:
        raise UnreadableFile(
            f"binary content (got a NUL byte at column {_column(data, nul)}; expected {expected})",
            data.count(b"\n", 0, nul) + 1,
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(
            f"not UTF-8 text (got byte 0x{data[exc.start]:02X} at column {_column(data, exc.start)}; "
            "expected UTF-8: save the file as UTF-8)",
            data.count(b"\n", 0, exc.start) + 1,
        ) from None


def _column(data: bytes, offset: int) -> int:
    return offset - (data.rfind(b"\n", 0, offset) + 1) + 1


def _check_kind(info: os.stat_result, expected: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        if kind == KINDS[stat.S_IFDIR]:
            raise UnreadableFile(f"is a directory (expected {expected})")
        raise UnreadableFile(f"not a regular file (got {kind}; expected {expected})")


def _check_size(size: int, limit: int, exact: bool, note: str) -> None:
    if size > limit:
        shown = f"{size} bytes" if exact else f"more than {limit} bytes"
        raise UnreadableFile(f"file too large (got {shown}; expected at most {limit} bytes{note})")
