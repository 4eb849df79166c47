"""Atomic writes: a crash leaves the old file (or folder) or the new one, never half of either.

Every JSON/YAML/CSV/Markdown file a run writes goes through here.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=1)
def umask() -> int:
    """The process umask (read once: os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(executable: bool = False) -> int:
    """The mode a plain open() or mkdir() gives under the umask: 0644 / 0755 under umask 022."""
    return (0o777 if executable else 0o666) & ~umask()


def match_umask(path: Path) -> Path:
    """Give `path`, and everything under it if it is a folder, the mode a plain write would.

    Private temp files (mkstemp: 0600, used by atomic writes here and by libraries that save
    weights) would otherwise leave run files that another user, a container or a Ray worker
    on shared storage cannot read. Execute bits are kept; links, and files this user may not
    change, are left alone.
    """
    path = Path(path)
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if p.is_symlink():
            continue
        try:
            mode = stat.S_IMODE(p.stat().st_mode)
            wanted = plain_mode(executable=p.is_dir() or bool(mode & 0o111))
            if mode != wanted:
                p.chmod(wanted)
        except OSError:  # another user's file on shared storage, or gone meanwhile: not ours to change
            continue
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write to a temp file beside `path`, fsync, then rename over it (atomic on POSIX).
    The file gets the umask's mode (0644 under 022), not the temp file's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, plain_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def append_line(path: Path, line: str) -> Path:
    """Append one line to a log file (ratings.jsonl) in a single write to a file opened with O_APPEND,
    then fsync: a crash leaves the lines before it whole and at worst a cut last line, which the next
    append ends first (so the new line stays whole) and readers skip; two writers never interleave
    within a line. `line` must not hold a newline."""
    if "\n" in line:
        raise ValueError("append_line writes one line: the text holds a newline")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, plain_mode())
    try:
        size = os.fstat(fd).st_size
        cut = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        data = ("\n" if cut else "").encode() + (line + "\n").encode("utf-8")
        written = os.write(fd, data)
        if written != len(data):  # a full disk: say so rather than leave half a line unnoticed
            raise OSError(f"{path}: wrote {written} of {len(data)} bytes of a line")
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def atomic_replace_dir(target: Path, build: Callable[[Path], None]) -> Path:
    """Build a folder in a temp sibling with `build(tmp)`, then swap it in for `target`.

    If `build` raises, `target` is untouched and the temp folder removed. The swap renames
    the old folder aside first, so a crash between the two renames leaves both on disk.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.mkdir()
        build(tmp)
        match_umask(tmp)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.old"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
