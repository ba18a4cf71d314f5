"""What every ``normstudy`` command prints through: one stdout and one stderr console, and one
way to fail (the message with credentials masked, exit 2 unless told otherwise)."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

from normstudy.redact import redact

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/bold red] {redact(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
