"""Plots of a table where a curve reads better than numbers: ours against the paper (matplotlib PNGs)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

from risbench.report.compare import Comparison, mean_metric  # noqa: E402
from risbench.report.paper import canonical  # noqa: E402

NOT_COMPARABLE = "CPU-size synthref runs: not comparable with the paper"
PLOTTED_METRICS = ("oIoU", "mIoU")


def _numeric(value) -> float | None:
    try:
        return float(canonical(value))
    except (TypeError, ValueError):
        return None


def _x_of(row, key: str) -> float | None:
    if key in row.overrides:
        return _numeric(row.overrides[key])
    if key in row.descriptors:
        return _numeric(row.descriptors[key])
    return None


def _group_of(row, key: str) -> str:
    """What else tells the rows of one curve from the others (e.g. weight sharing, decoder): the other
    descriptors when the x axis is a descriptor, the other overrides when it is an override."""
    source = row.descriptors if key in row.descriptors else row.overrides
    return ", ".join(f"{k}={v}" for k, v in source.items() if k != key and not isinstance(v, float))


def _title(comparison: Comparison) -> str:
    table = comparison.table
    title = f"{table.paper} {table.id}"
    return title + f"\n({NOT_COMPARABLE})" if comparison.synthref_tiny else title


def plot_comparison(comparison: Comparison, path: Path) -> Path | None:
    """``path`` (PNG) for a table with a plot spec, or None when the table does not plot."""
    table = comparison.table
    if table.plot is None or not table.columns:
        return None
    if table.plot["x"] == "buckets":
        return _plot_buckets(comparison, path)
    columns = [c for metric in PLOTTED_METRICS for c in table.columns if c.metric == metric] or table.columns[:1]
    key = table.plot["x"]
    rows = [r for r in comparison.rows if r.row.reproducible and _x_of(r.row, key) is not None]
    if len(rows) < 2:
        return None
    groups = sorted({_group_of(r.row, key) for r in rows})
    fig, axes = plt.subplots(1, len(columns), figsize=(5.2 * len(columns), 4.0), squeeze=False)
    for ax, column in zip(axes[0], columns):
        for index, group in enumerate(groups):
            members = sorted((r for r in rows if _group_of(r.row, key) == group), key=lambda r: _x_of(r.row, key))
            suffix = f" ({group})" if group else ""
            colour = f"C{index}"
            xs = [_x_of(r.row, key) for r in members]
            paper = [r.row.paper.get(column.name) for r in members]
            ours = [mean_metric(r.jobs, column, "paper/") for r in members]
            common = [mean_metric(r.jobs, column, "") for r in members]
            _line(ax, xs, paper, f"paper{suffix}", colour, "-", "o")
            _line(ax, xs, ours, f"risbench, paper protocol{suffix}", colour, "--", "s")
            _line(ax, xs, common, f"risbench, common protocol{suffix}", colour, ":", "^")
        ticks = sorted({_x_of(r.row, key) for r in rows})
        if len(ticks) <= 12:
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlabel(table.plot["label"])
        ax.set_ylabel(f"{column.metric} (%), {column.split}")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    fig.suptitle(_title(comparison), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the canvas grows to hold the legend
    plt.close(fig)
    return path


def _line(ax, xs, ys, label, colour, style, marker) -> None:
    points = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if points:
        ax.plot(*zip(*points), style, color=colour, marker=marker, label=label)


def _plot_buckets(comparison: Comparison, path: Path) -> Path | None:
    columns = comparison.table.columns
    positions = list(range(len(columns)))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    reproduced = 0
    for index, result in enumerate(comparison.rows):
        row = result.row
        paper = [row.paper.get(c.name) for c in columns]
        if not row.reproducible:  # the paper's baselines, for context
            _line(ax, positions, paper, f"{row.label} (paper)", f"{0.45 + 0.1 * (index % 4):.2f}", ":", ".")
            continue
        colour = f"C{reproduced}"
        reproduced += 1
        _line(ax, positions, paper, f"{row.label} (paper)", colour, "-", "o")
        if result.jobs:
            _line(ax, positions, [mean_metric(result.jobs, c, "paper/") for c in columns],
                  f"risbench {row.label}, paper protocol", colour, "--", "s")
            _line(ax, positions, [mean_metric(result.jobs, c, "") for c in columns],
                  f"risbench {row.label}, common protocol", colour, ":", "^")
    ax.set_xticks(positions, [c.label for c in columns])
    ax.set_xlabel("expression length")
    ax.set_ylabel(f"{columns[0].metric.split('/')[-1]} (%), {columns[0].split}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(_title(comparison), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_leaderboard(rows: list[dict], path: Path, synthref: bool = True) -> Path | None:
    """Bars per model: mIoU on val/testA/testB with the text, and the text-blind control on val."""
    if not rows:
        return None
    series = [("val mIoU", "val"), ("testA mIoU", "testA"), ("testB mIoU", "testB"), ("blind val mIoU", "blind val")]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(rows) + 2), 4.0))
    for index, (key, label) in enumerate(series):
        xs = [i + (index - (len(series) - 1) / 2) * width for i in range(len(rows))]
        ys = [row.get(key) if row.get(key) is not None else 0.0 for row in rows]
        ax.bar(xs, ys, width, label=label, color=f"C{index}" if "blind" not in key else "0.6",
               hatch="//" if "blind" in key else None)
    several_data = len({row["data"] for row in rows}) > 1
    ax.set_xticks(range(len(rows)), [f"{row['model']}\n{row['data']}" if several_data else row["model"] for row in rows])
    ax.set_xlabel("model")
    ax.set_ylabel("mIoU (%), common protocol")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ax.set_title("synthref leaderboard (CPU size, fixed step budget)" if synthref else "leaderboard", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
