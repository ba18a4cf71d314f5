"""Ray cluster launcher files (cluster.yaml, clusters/*.yaml): offline validation and fit checks."""

from normstudy.cluster._launcher import (
    ClusterConfigError,
    check_fits,
    describe_node_types,
    fitting_node_types,
    load_cluster_config,
    node_types,
)

__all__ = [
    "ClusterConfigError",
    "check_fits",
    "describe_node_types",
    "fitting_node_types",
    "load_cluster_config",
    "node_types",
]
