"""The stored schema of a results dataset: ``results/_schema.json`` and each file's metadata.

Version 1: datasets written before schemas were stored (no ``_schema.json``; each file typed
by its own values). Version 2: one schema per study, in ``_schema.json`` and in the Parquet
metadata of every file (key ``normstudy.schema``), every file holding all its columns.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from normstudy.storage import Location

SCHEMA_VERSION = 2
SCHEMA_FILE = "_schema.json"
METADATA_KEY = b"normstudy.schema"
TRIALS_KEY = b"normstudy.trials"
"""Parquet metadata of a compacted part: the JSON list of the trials it holds."""

_TYPES = {
    str(t): t
    for t in (pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.timestamp("us", tz="UTC"))
}


class ResultsFormatError(ValueError):
    """A results dataset this version of normstudy cannot read (names the version found)."""


def schema_document(schema: pa.Schema, *, conforming: bool = False) -> dict[str, Any]:
    """The JSON form of ``schema``; ``conforming`` marks files still being rewritten to it."""
    columns = [{"name": f.name, "type": str(f.type)} for f in schema]
    document: dict[str, Any] = {"format": "normstudy-results", "version": SCHEMA_VERSION}
    if conforming:
        document["conforming"] = True
    return {**document, "columns": columns}


def schema_from_document(document: dict[str, Any], where: object) -> pa.Schema:
    version = document.get("version")
    if document.get("format") != "normstudy-results" or not isinstance(version, int):
        raise ResultsFormatError(f"{where}: not a normstudy results schema")
    if version > SCHEMA_VERSION:
        raise ResultsFormatError(
            f"{where}: results schema version {version}, newer than this normstudy reads "
            f"(versions 1 to {SCHEMA_VERSION}): upgrade normstudy to read this study"
        )
    try:
        return pa.schema([pa.field(c["name"], _TYPES[c["type"]]) for c in document["columns"]])
    except (KeyError, TypeError) as e:
        raise ResultsFormatError(f"{where}: unreadable column entry ({e})") from e


def with_metadata(schema: pa.Schema) -> pa.Schema:
    """``schema`` carrying its own JSON form, as written into every Parquet file."""
    return schema.with_metadata({METADATA_KEY: json.dumps(schema_document(schema))})


def load_schema(results_dir: Location) -> tuple[pa.Schema | None, bool]:
    """The stored schema (None: a version-1 dataset or none yet), and whether files are still
    being conformed to it."""
    file = results_dir / SCHEMA_FILE
    try:
        text = file.read_text()
    except FileNotFoundError:
        return None, False
    try:
        document = json.loads(text)
    except ValueError as e:
        raise ResultsFormatError(f"{file}: not JSON ({e})") from e
    return schema_from_document(document, file), bool(document.get("conforming"))


def save_schema(results_dir: Location, schema: pa.Schema, *, conforming: bool = False) -> None:
    document = schema_document(schema, conforming=conforming)
    (results_dir / SCHEMA_FILE).write_text(json.dumps(document, indent=1) + "\n")
