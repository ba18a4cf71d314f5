"""Read a study description: YAML -> ``--set`` overrides -> validated ``StudySpec``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from normstudy.spec._model import SearchSpec, StudySpec
from normstudy.spec._yaml import MAX_BYTES, YamlLimitError, parse_yaml
from normstudy.storage import Location


class SpecError(ValueError):
    """A study description that cannot be used; ``str(err)`` names each bad field and the fix."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(
            f"{source}: invalid study description\n" + "\n".join(f"  - {p}" for p in problems)
        )


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=0.1"`` -> ``("train.lr", 0.1)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SpecError("--set", [f"{text!r}: write dotted.key=value (e.g. train.epochs=1)"])
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except YamlLimitError as err:
        raise SpecError("--set", [f"{key.strip()}: {err}"]) from None
    except (yaml.YAMLError, ValueError) as err:
        raise SpecError("--set", [f"{text!r}: the value is not valid YAML ({err})"]) from None
    return key.strip(), value


_DIST_FIELDS = ("type", "low", "high", "step", "log", "choices", "values")


def _space_of(data: dict[str, Any]) -> Any:
    search = data.get("search")
    return search.get("space") if isinstance(search, dict) else None


def _scale_of(data: dict[str, Any]) -> Any:
    return data.get("scale")


def apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in raw spec data. Existing keys may contain dots
    (``search.space.train.lr.high``): at each level the longest existing key that matches wins."""
    node = data
    rest = key
    while True:
        match = next(
            (
                k
                for k in sorted(node, key=lambda k: -len(str(k)))
                if rest == str(k) or rest.startswith(f"{k}.")
            ),
            None,
        )
        if match is None and node is _space_of(data):
            # A new space key keeps its dots: 'train.lr' or 'train.lr.low' -> key 'train.lr'.
            head, _, tail = rest.rpartition(".")
            if tail in _DIST_FIELDS and head:
                node.setdefault(head, {})[tail] = value
            else:
                node[rest] = value
            return
        if match is None and node is _scale_of(data):  # scale keys keep their dots too
            node[rest] = value
            return
        if match is None:
            head, _, tail = rest.partition(".")
            if not tail:
                node[head] = value
                return
            node = node.setdefault(head, {})
            rest = tail
        elif rest == str(match):
            node[match] = value
            return
        else:
            child = node[match]
            if not isinstance(child, dict):
                child = node[match] = {}
            node, rest = child, rest[len(str(match)) + 1 :]


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = StudySpec
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
    return list(model.model_fields)


_BRANCHES = ("str", "int", "float", "bool", "SeedsSpec")


def _union_tag(part: Any) -> bool:
    """Pydantic names the branch of a union in an error's location (``list[str]``,
    ``SeedsSpec``): not a key the user wrote."""
    return isinstance(part, str) and ("[" in part or part in _BRANCHES)


_SHAPE_ERRORS = ("model_type", "dict_type", "list_type")


def _relevant(errors: list[Any]) -> list[Any]:
    """Leave out a union branch whose shape does not fit (``seeds: [2**40]`` is a list: that it
    is not a ``{count: k}`` mapping says nothing) when another branch of it says more."""

    def beside(shape: Any, other: Any) -> bool:
        field = shape["loc"][:-1]
        return len(other["loc"]) > len(shape["loc"]) and other["loc"][: len(field)] == field

    return [
        e
        for e in errors
        if not (
            e["type"] in _SHAPE_ERRORS
            and e["loc"]
            and _union_tag(e["loc"][-1])
            and any(beside(e, o) for o in errors if o["type"] not in _SHAPE_ERRORS)
        )
    ]


def _explain(err: ValidationError) -> list[str]:
    problems = []
    for e in _relevant(err.errors()):
        loc = tuple(p for p in e["loc"] if not _union_tag(p))
        where = ".".join(str(p) for p in loc)
        if loc[:2] == ("search", "space") and len(loc) > 2:
            # The distribution's tag ('loguniform', 'int') is not a key the user wrote.
            rest = [str(p) for p in e["loc"][4:]]
            where = f"search.space[{loc[2]!r}]" + "".join(f".{p}" for p in rest)
        msg = e["msg"].removeprefix("Value error, ")
        if msg.startswith(f"{where}.") or msg.startswith(f"{where}:"):
            where = ""  # the message already names the field
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            msg = "unknown key" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
        elif e["type"] == "union_tag_not_found":
            msg = "a distribution needs 'type': uniform, loguniform, int, categorical or grid"
        elif e["type"] == "missing":
            msg = "required field is missing"
        problems.append(f"{where}: {msg}" if where else msg)
    return problems


def validate_data(data: Any, source: str = "<spec>") -> StudySpec:
    if not isinstance(data, dict):
        raise SpecError(source, ["the file must hold a mapping (name:, dataset:, model:, ...)"])
    try:
        return StudySpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(source, _explain(err)) from None


def _read_bytes(path: str | Path | Location) -> tuple[bytes, str]:
    """The file's bytes (at most ``MAX_BYTES`` + 1) and its name for messages; a study in a
    remote home is a `Location`."""
    if isinstance(path, Location):
        try:
            return path.read_bytes(), path.uri
        except FileNotFoundError:
            raise SpecError(path.uri, ["no such file"]) from None
    local = Path(path)
    if not local.is_file():
        raise SpecError(str(local), ["no such file"])
    try:
        with local.open("rb") as f:
            return f.read(MAX_BYTES + 1), str(local)
    except OSError as err:
        raise SpecError(str(local), [f"cannot be read ({err.strerror or err})"]) from None


def _read(path: str | Path | Location) -> tuple[str, str]:
    """The file's text and its name for messages."""
    data, source = _read_bytes(path)
    if len(data) > MAX_BYTES:
        raise SpecError(source, [f"larger than {MAX_BYTES} bytes: not a study description"])
    try:
        return data.decode("utf-8"), source
    except UnicodeDecodeError as err:
        raise SpecError(source, [f"not UTF-8 text ({err}); save the file as UTF-8"]) from None


def load_spec(
    path: str | Path | Location, overrides: list[str] | tuple[str, ...] = ()
) -> StudySpec:
    """Load and validate a study description, applying ``dotted.key=value`` overrides first."""
    text, source = _read(path)
    try:
        data = parse_yaml(text)
    except YamlLimitError as err:
        raise SpecError(source, [str(err)]) from None
    except (yaml.YAMLError, ValueError) as err:
        raise SpecError(source, [f"not valid YAML: {err}"]) from None
    data = {} if data is None else data
    if isinstance(data, dict):
        for item in overrides:
            apply_override(data, *parse_override(item))
    return validate_data(data, source)


def load_search(path: str | Path | Location) -> SearchSpec:
    """Only the ``search`` section of a stored study description, validated: what `best`
    needs (metric, mode, searched keys), without the plugin checks of a whole `load_spec`."""
    from normstudy.spec._model import SearchSpec

    text, source = _read(path)
    try:
        data = parse_yaml(text)
    except (YamlLimitError, yaml.YAMLError, ValueError) as err:
        raise SpecError(source, [f"not valid YAML: {err}"]) from None
    search = data.get("search", {}) if isinstance(data, dict) else None
    try:
        return SearchSpec.model_validate(search or {})
    except ValidationError as err:
        raise SpecError(source, [f"search.{line}" for line in _explain(err)]) from None
