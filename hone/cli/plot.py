"""Loss curves as a PNG, for `hone jobs plot`. matplotlib is the `plot` extra, imported only here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hone.types import StepMetrics


class PlotUnavailable(Exception):
    pass


def plot_losses(metrics: list[StepMetrics], path: Path, title: str) -> None:
    """Training loss per step as a line; validation losses, where the trainer measured them, as points."""
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotUnavailable("jobs plot needs matplotlib: pip install 'hone[plot]'") from exc
    matplotlib.use("Agg")  # files only: no display needed
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 4.5), dpi=100)
    series: list[tuple[str, str, dict[str, Any]]] = [
        ("train_loss", "training loss", {"linewidth": 1.5}),
        ("valid_loss", "validation loss", {"marker": "o", "linewidth": 1.2}),
        ("full_valid_loss", "full validation loss", {"marker": "*", "markersize": 12, "linestyle": ""}),
    ]
    for field, label, style in series:
        points = [(m.step, getattr(m, field)) for m in metrics if getattr(m, field) is not None]
        if points:
            axes.plot(*zip(*points), label=label, **style)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")
    pyplot.close(figure)
