"""Ray cluster launcher files (cluster.yaml, clusters/*.yaml), checked offline.

Two checks run before anything is launched: the one ``ray up`` itself runs on a file (Ray's
defaults merged in, then its JSON schema and cross-field rules), and whether one trial of a
study fits any node type at all. The second matters because Ray refuses nothing: a trial that
asks for 2 GPUs on a cluster of 1-GPU workers stays pending forever, and only warnings in the
logs on the head say why.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

# The `local` (on-prem) provider builds this single node type for head and workers alike.
_LOCAL_NODE_TYPE = "local.cluster.node"
_START_FLAG = re.compile(r"--num-(cpus|gpus)[= ]+([0-9.]+)")
# Ray warns on every config whose file mounts are files, though only Docker clusters need
# directories there (a bind-mounted file misses updates); these files use no Docker.
_DOCKER_ONLY_WARNING = re.compile(
    r"[^\n]*File Mount: [^\n]*refers to a file\.\n[^\n]*directory\.[^\n]*\n?"
)


class ClusterConfigError(ValueError):
    """A cluster file that Ray would reject, or on which a study's trials cannot be placed."""


def load_cluster_config(path: str | Path) -> dict[str, Any]:
    """Read a cluster launcher file and check it the way ``ray up`` does, without a network.

    Runs Ray's ``prepare_config`` (the provider's defaults.yaml merged in, per-node-type
    ``min_workers``/``max_workers`` filled; for the ``local`` provider, the single node type
    built from ``head_ip`` and ``worker_ips``) and then ``validate_config`` (ray-schema.json
    plus Ray's cross-field rules), the pair Ray's own tests run on its example files. Neither
    contacts a cloud: credentials, AMIs and buckets are only checked by ``ray up``.

    Args:
        path: The YAML file, e.g. ``cluster.yaml``.

    Returns:
        The prepared config, as ``ray up`` would use it.

    Raises:
        ClusterConfigError: Naming the file and the problem.

    Example:
        >>> config = load_cluster_config("cluster.yaml")
        >>> check_fits({"cpus": 1, "gpus": 1}, config, "cluster.yaml")
    """
    path = Path(path)
    return _prepare_and_validate(_read_yaml(path), path)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ClusterConfigError(f"{path}: cannot read it: {e}") from e
    if not isinstance(raw, dict):
        raise ClusterConfigError(f"{path}: expected a mapping of cluster settings at top level")
    provider = raw.get("provider")
    if not isinstance(provider, dict) or not isinstance(provider.get("type"), str):
        # Ray would fail with a bare KeyError/AttributeError here.
        raise ClusterConfigError(f"{path}: provider.type is missing (e.g. aws, gcp, local)")
    return raw


def _prepare_and_validate(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    # Private Ray API (ray.autoscaler._private.util, as of ray 2.60): the only offline entry
    # to what `ray up` checks. Imported here so that `normstudy --help` never loads Ray.
    import click
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    console = io.StringIO()  # Ray prints its warnings; keep the ones that apply
    try:
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            config = prepare_config(copy.deepcopy(raw))
            validate_config(config)
    except jsonschema.ValidationError as e:
        where = ".".join(str(part) for part in e.absolute_path) or "top level"
        raise ClusterConfigError(f"{path}: {where}: {e.message}") from e
    except click.ClickException as e:  # Ray's cli_logger.abort, e.g. local without head_ip
        raise ClusterConfigError(f"{path}: {e.message}") from e
    except (ValueError, KeyError, TypeError, AssertionError, RuntimeError) as e:
        raise ClusterConfigError(f"{path}: {type(e).__name__}: {e}") from e
    warnings = _DOCKER_ONLY_WARNING.sub("", console.getvalue())
    if warnings.strip():
        sys.stderr.write(warnings)
    return config


def node_types(config: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The resources of each node type that can host trials, by node type name.

    Worker node types count with their declared ``resources``, unless ``max_workers`` is 0
    (the autoscaler never starts one). The head node type counts only if it declares CPUs:
    then trials may run there too, beside the MLflow server and the study's driver, and as
    the shipped files declare ``GPU: 0`` for the head (no GPU count counts as 0), only trials
    that ask for 0 GPUs do. A head declaring ``CPU: 0`` (or nothing) is a coordinator only.

    The ``local`` (on-prem) provider has one node type whose resources Ray detects at
    ``ray start``; they are read from the ``--num-cpus``/``--num-gpus`` flags of
    ``worker_start_ray_commands`` (type ``worker_ips``) and ``head_start_ray_commands``
    (type ``head_ip``), which on-prem files state for that reason (Ray honours them too).

    Args:
        config: A config from :func:`load_cluster_config`.

    Returns:
        ``{node type: {"CPU": 4.0, "GPU": 1.0, ...}}``.

    Raises:
        ClusterConfigError: A worker node type states no CPU or GPU count.
    """
    if config["provider"]["type"] == "local":
        return _local_node_types(config)
    declared: dict[str, dict[str, float]] = {}
    head = config["head_node_type"]
    for name, spec in config["available_node_types"].items():
        resources = {k: float(v) for k, v in spec.get("resources", {}).items()}
        if name == head:
            if resources.get("CPU", 0.0) > 0:
                declared[name] = {"GPU": 0.0, **resources}
        elif spec.get("max_workers", config.get("max_workers", 0)) > 0:
            declared[name] = _require_counts(name, resources, "resources")
    return declared


def _local_node_types(config: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    declared = {}
    head = _start_flags(config.get("head_start_ray_commands", []))
    if head.get("CPU", 0.0) > 0:
        declared["head_ip"] = {"GPU": 0.0, **head}
    if config["available_node_types"][_LOCAL_NODE_TYPE].get("max_workers", 0) > 0:
        workers = _start_flags(config.get("worker_start_ray_commands", []))
        where = "--num-cpus/--num-gpus of `ray start` in worker_start_ray_commands"
        declared["worker_ips"] = _require_counts("worker_ips", workers, where)
    return declared


def _start_flags(commands: list[str]) -> dict[str, float]:
    flags = {}
    for command in commands:
        for name, value in _START_FLAG.findall(command):
            flags[name[:3].upper()] = float(value)
    return flags


def _require_counts(name: str, resources: dict[str, float], where: str) -> dict[str, float]:
    missing = [key for key in ("CPU", "GPU") if key not in resources]
    if missing:
        raise ClusterConfigError(
            f"node type {name} states no {' and no '.join(missing)} count in {where}: Ray "
            "would detect it on the machine, but an offline check cannot; state it (GPU: 0 for "
            "a CPU-only type)"
        )
    return resources


def fitting_node_types(
    resources: Mapping[str, float], config: Mapping[str, Any]
) -> dict[str, dict[str, float]]:
    """The node types (see :func:`node_types`) on which one trial with ``resources`` fits.

    Args:
        resources: One trial's ``{"cpus": ..., "gpus": ...}`` (``StudySpec.trial_resources``).
        config: A config from :func:`load_cluster_config`.
    """
    return _fitting(*_asked(resources), node_types(config))


def check_fits(resources: Mapping[str, float], config: Mapping[str, Any], path: str | Path) -> None:
    """Raise unless one trial with ``resources`` fits at least one node type of ``config``.

    Args:
        resources: One trial's ``{"cpus": ..., "gpus": ...}`` (``StudySpec.trial_resources``).
        config: A config from :func:`load_cluster_config`.
        path: The cluster file, named in the message.

    Raises:
        ClusterConfigError: Naming ``resources.cpus``/``resources.gpus`` and the node types
            with their resources.
    """
    try:
        types = node_types(config)
    except ClusterConfigError as e:
        raise ClusterConfigError(f"{path}: {e}") from e
    if not types:
        raise ClusterConfigError(
            f"{path}: no node type can host trials (every worker type has max_workers 0 and "
            "the head declares no CPU)"
        )
    cpus, gpus = _asked(resources)
    if _fitting(cpus, gpus, types):
        return
    field = _short_field(cpus, gpus, types)
    raise ClusterConfigError(
        f"{path}: {_shortfall(cpus, gpus, field)}: {describe_node_types(types)}; lower {field} "
        "or add a node type that has enough (the trials would wait forever)"
    )


def _asked(resources: Mapping[str, float]) -> tuple[float, float]:
    # The defaults of the study's ResourcesSpec.
    return float(resources.get("cpus", 1.0)), float(resources.get("gpus", 0.0))


def _fitting(
    cpus: float, gpus: float, types: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    return {
        name: res
        for name, res in types.items()
        if res.get("CPU", 0.0) >= cpus and res.get("GPU", 0.0) >= gpus
    }


def _short_field(cpus: float, gpus: float, types: dict[str, dict[str, float]]) -> str:
    if gpus > max(res.get("GPU", 0.0) for res in types.values()):
        return "resources.gpus"
    if cpus > max(res.get("CPU", 0.0) for res in types.values()):
        return "resources.cpus"
    return "resources.cpus or resources.gpus"


def _shortfall(cpus: float, gpus: float, field: str) -> str:
    asks = f"(resources.cpus {_num(cpus)}, resources.gpus {_num(gpus)})"
    if field == "resources.gpus":
        return f"resources.gpus is {_num(gpus)} per trial {asks} but no node type has that many"
    if field == "resources.cpus":
        return f"resources.cpus is {_num(cpus)} per trial {asks} but no node type has that many"
    return f"no node type has both the CPUs and the GPUs of one trial {asks}"


def describe_node_types(types: Mapping[str, Mapping[str, float]]) -> str:
    """``"ray.worker.gpu1 {CPU: 4, GPU: 1}, ..."``: node types as the messages show them."""
    return ", ".join(
        f"{name} {{{', '.join(f'{k}: {_num(v)}' for k, v in sorted(res.items()))}}}"
        for name, res in types.items()
    )


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
