"""A metric value that could not be computed, carried through reports in place of a number."""

from __future__ import annotations

import math
from typing import Any

import torch


class Unavailable:
    """The metric was not computed; ``reason`` says why (missing weights, no detected faces, …).

    Reports print ``unavailable (<reason>)``; never a number. (A plain class, not a frozen dataclass: torchmetrics
    rebuilds dataclasses found in a ``compute`` result.)
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = str(reason)

    def __str__(self) -> str:
        return f"unavailable ({self.reason})"

    def __repr__(self) -> str:
        return f"Unavailable({self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unavailable) and other.reason == self.reason

    def __hash__(self) -> int:
        return hash(("Unavailable", self.reason))


MetricValue = float | Unavailable


def as_metric_value(value: Any) -> MetricValue:
    """A python float (from a 0-d tensor, numpy scalar or number), or the ``Unavailable`` passed in."""
    if isinstance(value, Unavailable):
        return value
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"a metric value must be a scalar; got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().cpu().item())
    return float(value)


def format_value(value: MetricValue, digits: int = 4) -> str:
    """``0.1523`` style text, ``inf``/``nan`` spelled out, ``unavailable (reason)`` for an unavailable value."""
    if isinstance(value, Unavailable):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.{digits}f}"
