"""The Ray cluster launcher files: Ray's own offline checks, the promises every file keeps
(MLflow with basic-auth, Ray token auth), and `normstudy validate --cluster`. No network."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from normstudy.cluster import (
    ClusterConfigError,
    check_fits,
    fitting_node_types,
    load_cluster_config,
    node_types,
)

ROOT = Path(__file__).resolve().parents[1]
# Every cluster file, so that a new one in clusters/ is tested without anyone listing it.
CLUSTER_FILES = [ROOT / "cluster.yaml", *sorted((ROOT / "clusters").glob("*.yaml"))]
NORMSTUDY = Path(sys.executable).with_name("normstudy")


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _raw(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_cluster_files_are_there() -> None:
    assert {_name(p) for p in CLUSTER_FILES} >= {
        "cluster.yaml",
        "clusters/gcp.yaml",
        "clusters/onprem.yaml",
    }


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=_name)
def test_validates_with_rays_schema_and_defaults(path: Path) -> None:
    config = load_cluster_config(path)
    assert config["cluster_name"] == "normstudy"
    assert "cluster_synced_files" in config  # Ray's defaults were merged in
    types = node_types(config)
    assert any(res["GPU"] >= 1 for res in types.values()), types
    assert all({"CPU", "GPU"} <= set(res) for res in types.values()), types


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=_name)
def test_keeps_its_promises(path: Path) -> None:
    raw = _raw(path)
    head_start = "\n".join(raw["head_start_ray_commands"])
    assert "mlflow server" in head_start
    assert "--app-name basic-auth" in head_start
    assert "--serve-artifacts" in head_start
    assert "MLFLOW_AUTH_CONFIG_PATH=$HOME/normstudy/clusters/mlflow_auth.ini" in head_start
    assert "RAY_AUTH_MODE=token" in head_start
    assert "RAY_AUTH_MODE=token" in "\n".join(raw["worker_start_ray_commands"])
    # One token for the whole cluster: made on the head, synced to the workers.
    assert "ray get-auth-token --generate > /dev/null" in "\n".join(raw["head_setup_commands"])
    assert "~/.ray/auth_token" in raw["cluster_synced_files"]
    assert "pip install -c constraints.txt -e" in "\n".join(raw["setup_commands"])


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=_name)
def test_file_mounts_exist_in_the_repository(path: Path) -> None:
    for remote, local in _raw(path)["file_mounts"].items():
        assert (ROOT / local).exists(), f"{_name(path)}: file_mounts {remote}: {local}"
    assert (ROOT / "clusters" / "mlflow_auth.ini").is_file()


def test_an_unknown_top_level_key_is_rejected(tmp_path: Path) -> None:
    config = {**_raw(ROOT / "cluster.yaml"), "max_wrokers": 3}
    with pytest.raises(ClusterConfigError, match=r"cluster\.yaml: top level: .*max_wrokers"):
        load_cluster_config(_write(tmp_path, config))


def test_a_worker_type_without_node_config_is_rejected(tmp_path: Path) -> None:
    config = copy.deepcopy(_raw(ROOT / "cluster.yaml"))
    del config["available_node_types"]["ray.worker.gpu1"]["node_config"]
    with pytest.raises(ClusterConfigError, match=r"ray\.worker\.gpu1: 'node_config' is a required"):
        load_cluster_config(_write(tmp_path, config))


def test_onprem_without_head_ip_is_rejected(tmp_path: Path) -> None:
    config = copy.deepcopy(_raw(ROOT / "clusters" / "onprem.yaml"))
    del config["provider"]["head_ip"]
    with pytest.raises(ClusterConfigError, match="head_ip"):
        load_cluster_config(_write(tmp_path, config))


def _small(gpu_types: dict[str, tuple[int, int]], head_cpus: int = 0) -> dict[str, Any]:
    """A minimal AWS config: a head and worker types {name: (CPU, GPU)}."""
    types: dict[str, Any] = {
        "head": {"resources": {"CPU": head_cpus, "GPU": 0}, "node_config": {}, "max_workers": 0}
    }
    for name, (cpu, gpu) in gpu_types.items():
        types[name] = {"resources": {"CPU": cpu, "GPU": gpu}, "node_config": {}, "max_workers": 2}
    return {
        "cluster_name": "t",
        "max_workers": 4,
        "provider": {"type": "aws", "region": "us-west-2"},
        "available_node_types": types,
        "head_node_type": "head",
    }


@pytest.fixture
def one_gpu(tmp_path: Path) -> dict[str, Any]:
    return load_cluster_config(_write(tmp_path, _small({"gpu1": (4, 1), "cpu": (16, 0)})))


def test_check_fits_accepts_a_trial_that_fits(one_gpu: dict[str, Any]) -> None:
    check_fits({"cpus": 1, "gpus": 1}, one_gpu, "cluster.yaml")
    check_fits({"cpus": 2, "gpus": 0.25}, one_gpu, "cluster.yaml")
    assert list(fitting_node_types({"cpus": 8, "gpus": 0}, one_gpu)) == ["cpu"]


def test_check_fits_names_the_field_and_the_node_types(one_gpu: dict[str, Any]) -> None:
    with pytest.raises(ClusterConfigError) as e:
        check_fits({"cpus": 1, "gpus": 2}, one_gpu, "cluster.yaml")
    message = str(e.value)
    assert message.startswith("cluster.yaml: resources.gpus is 2 per trial")
    assert "gpu1 {CPU: 4, GPU: 1}" in message and "cpu {CPU: 16, GPU: 0}" in message
    assert "lower resources.gpus" in message


def test_check_fits_names_cpus_and_combinations(one_gpu: dict[str, Any]) -> None:
    with pytest.raises(ClusterConfigError, match=r"resources\.cpus is 32 per trial"):
        check_fits({"cpus": 32, "gpus": 0}, one_gpu, "cluster.yaml")
    with pytest.raises(ClusterConfigError, match="no node type has both"):
        check_fits({"cpus": 8, "gpus": 1}, one_gpu, "cluster.yaml")


def test_the_head_hosts_trials_only_when_it_declares_cpus(tmp_path: Path) -> None:
    coordinator = load_cluster_config(_write(tmp_path, _small({"gpu1": (4, 1)})))
    assert list(node_types(coordinator)) == ["gpu1"]
    busy_head = load_cluster_config(_write(tmp_path, _small({"gpu1": (4, 1)}, head_cpus=8)))
    assert list(fitting_node_types({"cpus": 8, "gpus": 0}, busy_head)) == ["head"]


def test_a_worker_type_must_state_its_gpus(tmp_path: Path) -> None:
    config = _small({"gpu1": (4, 1)})
    del config["available_node_types"]["gpu1"]["resources"]["GPU"]
    loaded = load_cluster_config(_write(tmp_path, config))
    with pytest.raises(ClusterConfigError, match="gpu1 states no GPU count"):
        check_fits({"cpus": 1, "gpus": 0}, loaded, "cluster.yaml")


def _validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NORMSTUDY), "validate", "searchspaces/quickstart.yaml", "--cluster", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_rejects_a_study_that_fits_no_node_type() -> None:
    result = _validate("cluster.yaml", "--set", "resources.gpus=16")
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "resources.gpus is 16 per trial" in message
    assert "ray.worker.gpu8 {CPU: 96, GPU: 8}" in message


def test_cli_accepts_a_study_that_fits() -> None:
    result = _validate("cluster.yaml", "--set", "resources.gpus=1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fits node types: ray.worker.gpu1 {CPU: 4, GPU: 1}" in " ".join(result.stdout.split())
    assert "WARN" not in result.stdout + result.stderr  # Ray's docker-only warnings stay quiet
