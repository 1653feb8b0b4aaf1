"""Writing files so that nothing is ever half-written: temporary name in the same folder, then rename."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from lorakit.errors import LorakitError


def _umask() -> int:
    """The process umask (read by setting it and putting it back: POSIX has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _kind(path: Path) -> str | None:
    """What stands at ``path`` without following a symlink: 'link', 'dir', 'file', 'other' or None."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


def _remove(path: Path) -> None:
    kind = _kind(path)
    if kind == "dir":
        shutil.rmtree(path, ignore_errors=True)
    elif kind is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces ``path``, on failure it is removed.

    Whatever stands at ``path`` is replaced when it is of the same kind (a folder by a folder, a file by a
    file) or a symlink, live or dangling (the link goes, what it points to is left alone). A folder where a
    file is to be written, or the other way round, is refused before anything is written: replacing it
    would destroy something the caller did not name. What is written follows the user's umask, like any file
    (``tempfile.mkdtemp`` alone would leave a 0700 folder that no other account can read).
    """
    path = Path(path)
    want = "dir" if is_dir else "file"
    have = _kind(path)
    if have not in (None, "link", want):
        raise LorakitError(f"cannot write a {'folder' if is_dir else 'file'} here: a "
                           f"{'folder' if have == 'dir' else 'special file' if have == 'other' else 'file'} "
                           "of that name is in the way", file=path, hint="Remove it or choose another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    target = tmp if is_dir else tmp / path.name
    try:
        yield target
        if is_dir:
            if _kind(path) is None:
                os.replace(tmp, path)
            else:  # a folder or a symlink: move it aside first (rename cannot put a folder over either)
                old = tmp.with_name(tmp.name[: -len(".tmp")] + ".old")
                os.replace(path, old)
                os.replace(tmp, path)
                _remove(old)
        else:
            os.replace(target, path)  # replaces a file, or a symlink itself (live or dangling)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one whole line; closing the file hands it to the OS, so a killed process loses nothing written."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def cache_home() -> Path:
    """Where pulled models and converted GGUFs live; LORAKIT_HOME overrides."""
    root = os.environ.get("LORAKIT_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "lorakit")
    return Path(root)
