"""Property-based: any perturbation of a real study description either validates into a study
whose numbers and names are usable, or is refused as a SpecError (never another exception).

Perturbations of searchspaces/quickstart.yaml: leaves and whole sections replaced by random
JSON-like values (huge and negative integers, inf/nan/huge floats, strings with newlines and
other unicode, lists, mappings, None), unknown keys added, keys dropped; then written as YAML
and read by ``load_spec``, or given as ``--set`` overrides. Derandomized with a fixed number of
examples, so CI sees the same cases every run, in seconds.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normstudy.spec import SpecError, StudySpec, load_spec
from normstudy.spec._types import NAME_RE, SEED_MAX

QUICKSTART = Path(__file__).resolve().parents[1] / "searchspaces" / "quickstart.yaml"
BASE = yaml.safe_load(QUICKSTART.read_text())

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.sampled_from([0, -1, 2**31, 2**32 - 1, 2**32, 2**63, 10**30])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([math.inf, -math.inf, math.nan, 1e308, -1e308, 5e-324, 1e30])
    | st.text(max_size=12)
    | st.sampled_from(["", "\n", "abc\n", "a/b", ".", "..", "val/acuracy", "é🙂", "x" * 300])
)
edges = st.sampled_from(
    [0, 1, -1, 2, 7, 2**32 - 1, 2**32, 2**53 + 1, 2**63, 100_000, 100_001]
) | st.sampled_from(
    [0.0, -0.0, 0.5, 1.0, 1e-320, 1e308, math.inf, math.nan, True, None, [], {}, [0.1, 1.0], "grid"]
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in the data: mapping keys and list positions, at every depth."""
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else []
    )
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def _perturb(data: dict[str, Any], draw: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = list(_paths(data))
        if not paths:
            break
        *parent_path, last = draw(st.sampled_from(paths))
        parent = data
        for part in parent_path:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "replace", "edge", "drop", "add"]))
        if action == "replace":
            parent[last] = draw(values)
        elif action == "edge":  # a value of a kind the field may take: reaches deeper checks
            parent[last] = draw(edges)
        elif action == "drop" and isinstance(parent, dict):
            del parent[last]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(values)
    return data


def _floats(node: Any) -> Iterator[float]:
    if isinstance(node, float):
        yield node
    elif isinstance(node, dict):
        for child in node.values():
            yield from _floats(child)
    elif isinstance(node, list | tuple):
        for child in node:
            yield from _floats(child)


def _check_invariants(spec: StudySpec) -> None:
    assert NAME_RE.fullmatch(spec.name) and len(spec.name) <= 100, spec.name
    bad = [x for x in _floats(spec.model_dump()) if not math.isfinite(x)]
    assert not bad, bad
    seeds = [*spec.seed_list(), spec.search.seed, spec.dataset.split_seed]
    assert all(0 <= s <= SEED_MAX for s in seeds), seeds
    assert 1 <= spec.train.epochs <= 100_000
    assert spec.trial_base()["seed"] <= SEED_MAX


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@SETTINGS
@given(data=st.data())
def test_perturbed_study_validates_or_is_a_spec_error(folder: Path, data: st.DataObject) -> None:
    perturbed = _perturb(BASE, data.draw)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(perturbed, allow_unicode=True), encoding="utf-8")
    try:
        spec = load_spec(path)
    except SpecError as err:
        assert err.problems and all(p.strip() for p in err.problems)
        return
    _check_invariants(spec)


@SETTINGS
@given(data=st.data())
def test_perturbing_overrides_validate_or_are_a_spec_error(data: st.DataObject) -> None:
    paths = [".".join(map(str, p)) for p in _paths(BASE) if all(isinstance(k, str) for k in p)]
    keys = st.sampled_from(paths) | st.text(min_size=1, max_size=20)
    overrides = data.draw(st.lists(st.tuples(keys, values), min_size=1, max_size=3))
    items = [f"{k}={yaml.safe_dump(v, default_flow_style=True, width=10**6)}" for k, v in overrides]
    try:
        spec = load_spec(QUICKSTART, [item.removesuffix("\n...\n").strip() for item in items])
    except SpecError as err:
        assert err.problems
        return
    _check_invariants(spec)
