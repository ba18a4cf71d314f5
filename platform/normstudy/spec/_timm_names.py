"""timm model names without importing timm (which imports torch).

``timm_models.txt`` is generated from the pinned timm by ``python -m normstudy.spec._timm_names``;
a test checks it against ``timm.list_models()``.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path

_FILE = Path(__file__).with_name("timm_models.txt")


@functools.cache
def timm_model_names() -> frozenset[str]:
    return frozenset(_FILE.read_text().split())


def check_model_name(name: str) -> None:
    names = timm_model_names()
    if name not in names:
        close = difflib.get_close_matches(name, sorted(names), n=4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models()){hint}")


def _write() -> None:
    import timm

    _FILE.write_text("\n".join(sorted(timm.list_models())) + "\n")


if __name__ == "__main__":
    _write()
