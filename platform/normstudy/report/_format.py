"""How numbers are shown in the exported tables and figure legends.

Metrics in percent with a chosen number of decimals (one by default: seed noise is rarely below
0.1 %), other metrics with three significant digits, config values with three significant digits
(``0.123``, ``12.3``, ``1e-5``), p-values with three decimals or in scientific notation when tiny.
A standard deviation is shown with as many decimals as its mean, so ``mean ± std`` reads at once.
"""

from __future__ import annotations

import math
from typing import Any

SIGNIFICANT = 3


def config_value(value: Any) -> str:
    """A config value: floats with 3 significant digits, everything else as it is."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    text = f"{value:.{SIGNIFICANT}g}"
    if "e" in text:  # 1e-05 -> 1e-5: the exponent's zero padding is noise in a table
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def metric_decimals(value: float, *, percent: bool, decimals: int) -> int:
    """Decimals of a metric: ``decimals`` in percent, else 3 significant digits of ``value``."""
    if percent:
        return decimals
    if value == 0 or not math.isfinite(value):
        return SIGNIFICANT - 1
    return max(0, SIGNIFICANT - 1 - math.floor(math.log10(abs(value))))


def metric_value(value: float, *, percent: bool, decimals: int, places: int | None = None) -> str:
    """A metric value (×100 when ``percent``), with ``places`` decimals if given."""
    if math.isnan(value):
        return "nan"
    shown = 100 * value if percent else value
    if places is None:
        places = metric_decimals(shown, percent=percent, decimals=decimals)
    return f"{shown:.{places}f}"


def mean_std(mean: float, std: float | None, *, percent: bool, decimals: int) -> str:
    """``mean ± std`` with the std at the mean's decimals."""
    if math.isnan(mean):
        return "nan"
    places = metric_decimals(100 * mean if percent else mean, percent=percent, decimals=decimals)
    text = metric_value(mean, percent=percent, decimals=decimals, places=places)
    if std is None:
        return text
    return f"{text} ± {metric_value(std, percent=percent, decimals=decimals, places=places)}"


def pvalue(p: float) -> str:
    """A p-value: three decimals, or two significant digits below 0.001."""
    if math.isnan(p):
        return "nan"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
