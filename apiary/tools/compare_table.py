"""The text tables of `apiary compare`: accuracy and ROC AUC, mean ± std over seeds."""

from __future__ import annotations

from typing import Any

__all__ = ["format_tables"]

_ORDER = ("central", "local", "local_best", "fedavg", "swarm", "federated")


def _cell(stat: dict[str, float | None], percent: bool) -> str:
    mean, std = stat["mean"], stat["std"]
    if mean is None or std is None:
        return "n/a"
    if percent:
        return f"{100 * mean:.1f} ± {100 * std:.1f}"
    return f"{mean:.3f} ± {std:.3f}"


def _rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    entries = {**result["methods"]}
    if "local_best" in result:
        entries["local_best"] = result["local_best"]
    return [entries[key] for key in _ORDER if key in entries]


def _table(result: dict[str, Any], metric: str, title: str, percent: bool) -> list[str]:
    hospitals = result["hospitals"]
    header = ["method", "all", "mean", *hospitals]
    body = [[row["label"], _cell(row["overall"][metric], percent),
             _cell(row["client_mean"][metric], percent),
             *(_cell(row["per_node"][h][metric], percent) for h in hospitals)]
            for row in _rows(result)]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:],
                                                              strict=True))])

    return [title, line(header), line(["-" * w for w in widths]), *map(line, body)]


def format_tables(result: dict[str, Any]) -> str:
    config, samples = result["config"], result["samples"]
    seeds = len(config["seeds"])
    lines = [
        f"dataset {result['dataset']['name']}"
        f"{', split ' + result['dataset']['split'] if 'split' in result['dataset'] else ''}: "
        f"model {config['model']}, {config['rounds']} "
        f"rounds × {config['epochs']} epochs, Adam lr {config['lr']}, batch "
        f"{config['batch_size']}; mean ± std over {seeds} seed(s)",
        "training / test samples: " + ", ".join(
            f"{h} {round(sum(c['train']) / seeds)}/{round(sum(c['test']) / seeds)}"
            for h, c in samples.items()),
        "",
        *_table(result, "accuracy", "held-out accuracy, % ('all' = union of the test splits, "
                "'mean' = mean over the hospitals' test splits, FLamby's metric)", True),
        "",
        *_table(result, "auc", "ROC AUC (n/a: a test split with one class)", False),
        "",
    ]
    if "local" in result["methods"]:
        lines.append("local (own data): each hospital's own model on its own test split; 'all' "
                     "is the mean of the local models on the union")
    for mode, checks in result["checks"].items():
        if "max_weight_diff" in checks:
            lines.append(
                f"{mode} − plaintext FedAvg: overall accuracy "
                f"{checks['mean_overall_accuracy_diff_pp']:+.2f} pp (mean over seeds); worst "
                f"seed: |Δ accuracy| {checks['max_accuracy_diff_pp']:.2f} pp (per round "
                f"{checks['max_round_accuracy_diff_pp']:.2f} pp), |Δ weight| "
                f"{checks['max_weight_diff']:.1e}; identical weights on every node: "
                f"{'yes' if checks['identical_weights_across_nodes'] else 'NO'}; every "
                f"hospital in every round: {'yes' if checks['all_hospitals_every_round'] else 'NO'}"
            )
    lines.append("seconds per run: " + ", ".join(
        f"{key} {entry['seconds']['mean']:.1f}" for key, entry in result["methods"].items()))
    lines.append(f"wall time: {result['wall_seconds']:.0f} s")
    return "\n".join(lines)
