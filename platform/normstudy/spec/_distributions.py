"""Search-space distributions, as written in a study's ``search.space``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from normstudy.spec._types import EXACT_INT_MAX, JsonLike

if TYPE_CHECKING:
    import optuna


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    def grid_values(self) -> list[Any] | None:
        """Explicit values for the grid sampler, or None for a continuous range."""
        return None

    def candidates(self) -> list[Any]:
        """Values that must all be valid for the field (range ends, every choice)."""
        raise NotImplementedError

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        raise NotImplementedError


class _Range(_Dist):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if not math.isfinite(self.high - self.low):
            raise ValueError(f"high − low overflows ({self.low} .. {self.high}): narrow the range")
        return self

    def candidates(self) -> list[Any]:
        return [self.low, self.high]


class Uniform(_Range):
    type: Literal["uniform"]

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_float(name, self.low, self.high)


class LogUniform(_Range):
    type: Literal["loguniform"]

    @model_validator(mode="after")
    def _positive(self) -> LogUniform:
        if self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_float(name, self.low, self.high, log=True)


class IntRange(_Dist):
    type: Literal["int"]
    low: Annotated[int, Field(ge=-EXACT_INT_MAX, le=EXACT_INT_MAX)]
    high: Annotated[int, Field(ge=-EXACT_INT_MAX, le=EXACT_INT_MAX)]
    step: Annotated[int, Field(ge=1, le=EXACT_INT_MAX)] = 1
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("int with log: true needs low >= 1 and step 1")
        return self

    def candidates(self) -> list[Any]:
        return [self.low, self.high]

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)


class Categorical(_Dist):
    type: Literal["categorical"]
    choices: Annotated[list[JsonLike], Field(min_length=1, max_length=1000)]

    def grid_values(self) -> list[Any] | None:
        return list(self.choices)

    def candidates(self) -> list[Any]:
        return list(self.choices)

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, self.choices)


class Grid(_Dist):
    """Explicit values (the grid sampler's axes); other samplers treat them as categorical."""

    type: Literal["grid"]
    values: Annotated[list[JsonLike], Field(min_length=1, max_length=1000)]

    def grid_values(self) -> list[Any] | None:
        return list(self.values)

    def candidates(self) -> list[Any]:
        return list(self.values)

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, self.values)


Distribution = Annotated[
    Uniform | LogUniform | IntRange | Categorical | Grid, Field(discriminator="type")
]
