"""The figure of `apiary compare`: accuracy per round, and accuracy per hospital (PNG).

Drawn on an Agg canvas directly, not through pyplot: no display and no global state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_comparison"]

_CURVES = {  # method: (colour, line style, marker)
    "fedavg": ("#1f77b4", "-", "o"),
    "swarm": ("#d62728", "--", "s"),
    "federated": ("#2ca02c", ":", "^"),
}
_BARS = ("central", "local", "fedavg", "swarm", "federated")
_BAR_COLOURS = {"central": "#444444", "local": "#bbbbbb", "fedavg": "#1f77b4",
                "swarm": "#d62728", "federated": "#2ca02c"}


def _rounds_panel(ax: Any, result: dict[str, Any]) -> None:
    methods = result["methods"]
    for key, (colour, style, marker) in _CURVES.items():
        if key not in methods or "curve" not in methods[key]:
            continue
        mean = np.array(methods[key]["curve"]["mean"])
        std = np.array(methods[key]["curve"]["std"])
        x = np.arange(1, len(mean) + 1)
        ax.plot(x, mean, style, color=colour, marker=marker, markersize=5, linewidth=1.8,
                label=methods[key]["label"])
        if key == "fedavg":
            ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.12,
                            label="FedAvg ± std over seeds")
        ax.set_xticks(x)
    levels = []
    if "central" in methods:
        levels.append((methods["central"]["overall"]["accuracy"]["mean"], "black", "-",
                       "central (pooled)"))
    if "local_best" in result:
        levels.append((result["local_best"]["overall"]["accuracy"]["mean"], "gray", "-.",
                       "best local model"))
    if "local" in methods:
        levels.append((methods["local"]["overall"]["accuracy"]["mean"], "gray", ":",
                       "mean of local models"))
    for value, colour, style, label in levels:
        ax.axhline(value, color=colour, linestyle=style, linewidth=1.2,
                   label=f"{label}: {100 * value:.1f} %")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy on the union of test splits")
    ax.set_title("held-out accuracy per round (mean over seeds; equal curves overlap)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def _hospitals_panel(ax: Any, result: dict[str, Any]) -> None:
    methods = result["methods"]
    groups = [*result["hospitals"], "all"]
    present = [m for m in _BARS if m in methods]
    width = 0.8 / max(len(present), 1)
    x = np.arange(len(groups))
    for i, key in enumerate(present):
        cells = [*(methods[key]["per_node"][h]["accuracy"] for h in result["hospitals"]),
                 methods[key]["overall"]["accuracy"]]
        ax.bar(x + (i - (len(present) - 1) / 2) * width, [c["mean"] for c in cells], width,
               yerr=[c["std"] for c in cells], capsize=2, color=_BAR_COLOURS[key],
               label=methods[key]["label"])
    ax.set_xticks(x, groups)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy on the hospital's test split")
    ax.set_title("per hospital (local: the hospital's own model; all: union of test splits)",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=len(present),
              frameon=False)


def plot_comparison(result: dict[str, Any], path: Path) -> Path:
    """Write the two-panel PNG for one dataset's comparison."""
    config = result["config"]
    fig = Figure(figsize=(14, 5.2))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.15]})
    _rounds_panel(left, result)
    _hospitals_panel(right, result)
    fig.suptitle(f"{result['dataset']['name']}: {len(result['hospitals'])} hospitals, model "
                 f"{config['model']}, {config['rounds']} rounds × {config['epochs']} epochs, "
                 f"{len(config['seeds'])} seed(s)", fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
