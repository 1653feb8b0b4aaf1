"""atomic_path replaces whatever stands at the target (folder, file, live or dangling symlink) or refuses it,
leaves nothing behind on failure, and writes with the user's umask."""
from __future__ import annotations

import os
import stat

import pytest

from lorakit.errors import LorakitError
from lorakit.io import atomic_path, write_text


def _siblings(folder):
    return sorted(p.name for p in folder.iterdir())


def _write_dir(path, text="new"):
    with atomic_path(path, is_dir=True) as tmp:
        (tmp / "f.txt").write_text(text)
        (tmp / "sub").mkdir()


def test_folder_written_where_nothing_was(tmp_path):
    _write_dir(tmp_path / "out")
    assert (tmp_path / "out" / "f.txt").read_text() == "new"
    assert _siblings(tmp_path) == ["out"]


def test_folder_replaces_a_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale").write_text("old")
    _write_dir(tmp_path / "out")
    assert _siblings(tmp_path / "out") == ["f.txt", "sub"] and _siblings(tmp_path) == ["out"]


def test_folder_replaces_a_dangling_symlink(tmp_path):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere", target_is_directory=True)
    assert not link.exists() and link.is_symlink()
    _write_dir(link)
    assert not link.is_symlink() and (link / "f.txt").read_text() == "new"
    assert _siblings(tmp_path) == ["out"]


def test_folder_replaces_a_live_symlink_and_leaves_its_target_alone(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep").write_text("mine")
    link = tmp_path / "out"
    link.symlink_to(real, target_is_directory=True)
    _write_dir(link)
    assert not link.is_symlink() and (link / "f.txt").exists()
    assert (real / "keep").read_text() == "mine"
    assert _siblings(tmp_path) == ["out", "real"]


def test_file_replaces_a_file_and_a_dangling_symlink(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("old")
    write_text(f, "新")
    assert f.read_text(encoding="utf-8") == "新"
    link = tmp_path / "b.txt"
    link.symlink_to(tmp_path / "missing.txt")
    write_text(link, "x")
    assert not link.is_symlink() and link.read_text() == "x"
    assert _siblings(tmp_path) == ["a.txt", "b.txt"]


def test_kind_mismatch_is_refused_before_writing(tmp_path):
    (tmp_path / "file").write_text("precious")
    with pytest.raises(LorakitError) as e:
        _write_dir(tmp_path / "file")
    assert "file of that name is in the way" in e.value.render() and str(tmp_path / "file") in e.value.render()
    assert (tmp_path / "file").read_text() == "precious"
    (tmp_path / "folder").mkdir()
    with pytest.raises(LorakitError, match="folder of that name is in the way"):
        write_text(tmp_path / "folder", "x")
    assert _siblings(tmp_path) == ["file", "folder"]


def test_failure_leaves_the_old_content_and_no_temporary(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out", is_dir=True) as tmp:
            (tmp / "half").write_text("half")
            raise RuntimeError("killed")
    assert _siblings(tmp_path / "out") == ["old"] and _siblings(tmp_path) == ["out"]


@pytest.mark.parametrize("mask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600),
                                                     (0o002, 0o775, 0o664)])
def test_modes_follow_the_umask(tmp_path, mask, dir_mode, file_mode):
    old = os.umask(mask)
    try:
        _write_dir(tmp_path / "out")
        write_text(tmp_path / "one.txt", "x")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "out") == dir_mode
    assert mode(tmp_path / "out" / "sub") == dir_mode
    assert mode(tmp_path / "out" / "f.txt") == file_mode
    assert mode(tmp_path / "one.txt") == file_mode
