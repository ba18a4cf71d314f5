"""The study description: typed, validated, with clear errors. Imports no torch or ray."""

from normstudy.spec._distributions import Distribution
from normstudy.spec._load import (
    SpecError,
    apply_override,
    load_search,
    load_spec,
    parse_override,
    validate_data,
)
from normstudy.spec._metrics import metric_catalogue, study_metrics
from normstudy.spec._model import (
    DatasetSpec,
    ModelSpec,
    SearchSpec,
    StudySpec,
    TrainSpec,
    TrialConfig,
)
from normstudy.spec._space import resolve_config, set_dotted

__all__ = [
    "DatasetSpec",
    "Distribution",
    "ModelSpec",
    "SearchSpec",
    "SpecError",
    "StudySpec",
    "TrainSpec",
    "TrialConfig",
    "apply_override",
    "load_search",
    "load_spec",
    "metric_catalogue",
    "parse_override",
    "resolve_config",
    "set_dotted",
    "study_metrics",
    "validate_data",
]
