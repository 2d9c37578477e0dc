"""JSON has no NaN or Infinity: what the control plane answers and what a trainer reports replace them with null.

Shared by the control plane (responses rendering stored values) and the trainer (reports that httpx would refuse
to send); standard library only."""

from __future__ import annotations

import math
from typing import Any


def finite(value: Any) -> Any:
    """`value` with every non-finite float, at any depth of dicts and lists, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
