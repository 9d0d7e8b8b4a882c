"""The report's PNG plots (accuracy per set, the mixture curve, the SFT loss curves, closeness),
drawn with matplotlib on bare Agg figures and written atomically; a set is the same colour in every
figure, and a missing result is said, not drawn as 0."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cotshape.core.artifacts import parse_set_name
from cotshape.core.records import atomic_path
from cotshape.reporting.formatting import number
from cotshape.reporting.report_data import BASE_SET, Metrics


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # a bare Figure on the Agg canvas: no pyplot global state, no display needed
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes, color="0.4")


def _task_colors(tasks: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {t: cmap(i % 10) for i, t in enumerate(tasks)}


#: one colour per named set in every plot, so a set is recognisable across figures
_SET_PALETTE = {
    "base": "#7f7f7f",
    "H": "#1f77b4",
    "G": "#2ca02c",
    "W": "#d62728",
    "P": "#9467bd",
    "step": "#8c564b",
}


def _set_colors(sets: Sequence[str]) -> dict[str, Any]:
    """Fixed colours for the named sets, a sequential map for the mixtures (light = few
    flawed), tab10 for any other set."""
    from matplotlib import colormaps

    mixes = [s for s in sets if parse_set_name(s).kind == "mix"]
    seq, other = colormaps["viridis"], colormaps["tab10"]
    colors: dict[str, Any] = {}
    k = 0
    steps = [s for s in sets if parse_set_name(s).kind == "step"]
    for s in sets:
        if s in _SET_PALETTE:
            colors[s] = _SET_PALETTE[s]
        elif s in steps:
            # browns, darker with more corrupted steps per CoT
            colors[s] = colormaps["copper"](0.75 - 0.5 * steps.index(s) / max(1, len(steps) - 1))
        elif s in mixes:
            # viridis runs dark to light; 0 % flawed gets the light end
            colors[s] = seq(0.9 - 0.75 * mixes.index(s) / max(1, len(mixes) - 1))
        else:
            colors[s] = other((6 + k) % 10)  # tab10 0-5 are the named sets
            k += 1
    return colors


def _pct_ylim(ax, values: Sequence[float]) -> None:
    """Percent axis from 0 with head room, not always 0-100: small accuracies stay readable."""
    top = max(values, default=0.0)
    ax.set_ylim(0, min(100.0, max(10.0, top * 1.2 + 2)))


def plot_accuracy(m: Metrics, tasks: Sequence[str], sets: Sequence[str], path: Path) -> None:
    from matplotlib.patches import Patch

    rows_sets = [BASE_SET, *sets]
    colors = _set_colors(rows_sets)
    fig = _new_figure(max(7.0, 1.2 + 1.6 * len(tasks) * 2), 4.2)
    axes = fig.subplots(1, 2, sharey=True)
    width = 0.8 / len(rows_sets)
    any_data = False
    all_ys: list[float] = []
    for ax, key, title in (
        (axes[0], "accuracy", "accuracy = correct / all"),
        (axes[1], "accuracy_parsed", "accuracy (parsed) = correct / parsed"),
    ):
        for j, s in enumerate(rows_sets):
            xs, ys, errs = [], [], []
            for i, t in enumerate(tasks):
                x = i - 0.4 + width * (j + 0.5)
                v = number(m.eval_value(t, s, key))
                if v is None:
                    # no result: say so, instead of a gap that reads like a 0 % bar
                    ax.text(x, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
                    continue
                xs.append(x)
                ys.append(100 * v)
                runs = [number(r.get(key)) for r in m.eval_value(t, s, "per_run") or []]
                runs = [100 * u for u in runs if u is not None]
                if len(runs) > 1:  # one dot per training run
                    ax.scatter([x] * len(runs), runs, s=9, color="0.1", zorder=3, linewidths=0)
                    all_ys.extend(runs)
                ci = m.eval_value(t, s, "ci95") if key == "accuracy" else None
                errs.append((100 * v - 100 * ci[0], 100 * ci[1] - 100 * v)
                            if isinstance(ci, list) and len(ci) == 2 else (0.0, 0.0))
            any_data |= bool(ys)
            bars = ax.bar(xs, ys, width=width, color=colors[s], edgecolor="white", linewidth=0.5)
            if key == "accuracy" and ys:  # the 95 % interval of each bar (training runs as the unit)
                ax.errorbar(xs, ys, yerr=[[e[0] for e in errs], [e[1] for e in errs]], fmt="none",
                            ecolor="0.2", elinewidth=0.8, capsize=2)
                all_ys.extend(y + e[1] for y, e in zip(ys, errs, strict=True))
            # value labels: a 0 % bar is otherwise indistinguishable from a missing one
            ax.bar_label(bars, labels=[f"{y:.0f}" for y in ys], fontsize=7, padding=1, color="0.25",
                         label_type="center" if key == "accuracy" else "edge")
            all_ys.extend(ys)
        ax.set_xticks(range(len(tasks)), list(tasks))
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlabel("task")
    axes[0].set_ylabel("accuracy (%)")
    _pct_ylim(axes[0], all_ys)
    if not any_data:
        _no_data(axes[0], "evaluation results")
    for ax in axes:
        ax.set_xlim(-0.5, len(tasks) - 0.5)
    # explicit handles: a set with no bars at all would otherwise get a default-coloured entry
    handles = [Patch(facecolor=colors[s], label=s) for s in rows_sets]
    axes[1].legend(handles=handles, title="training set", loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    fig.suptitle("Student accuracy per training set: mean over runs, a dot per run, 95 % CI over runs")
    _save_png(fig, path)


def plot_mixture(m: Metrics, tasks: Sequence[str], curve: Sequence[tuple[float, str]], path: Path) -> None:
    colors = _task_colors(tasks)
    fig = _new_figure(7.0, 4.5)
    ax = fig.subplots()
    any_data = False
    all_ys: list[float] = []
    markers = "osD^v<>P*X"
    for ti, t in enumerate(tasks):
        # tasks side by side around each fraction (±1.5 points), so no series hides another
        shift = 3.0 * (ti - (len(tasks) - 1) / 2) / max(1, len(tasks) - 1) if len(tasks) > 1 else 0.0
        for key, style, label in (("accuracy", "-", "correct / all"), ("accuracy_parsed", "--", "correct / parsed")):
            style += markers[ti % len(markers)] if key == "accuracy" else "x"
            pts = [(100 * float(p) + shift, number(m.eval_value(t, name, key)), m.eval_value(t, name, "ci95"))
                   for p, name in curve]
            pts = [(x, 100 * y, ci) for x, y, ci in pts if y is not None]
            if pts:
                any_data = True
                all_ys.extend(y for _, y, _ in pts)
                xs, ys = [x for x, _, _ in pts], [y for _, y, _ in pts]
                ax.plot(xs, ys, style, color=colors[t], label=f"{t}: {label}", markersize=5)
                if key == "accuracy" and all(isinstance(ci, list) and len(ci) == 2 for _, _, ci in pts):
                    # the Wilson 95 % interval of each point (correct / all)
                    lows = [y - 100 * ci[0] for _, y, ci in pts]
                    highs = [100 * ci[1] - y for _, y, ci in pts]
                    ax.errorbar(xs, ys, yerr=[lows, highs], fmt="none", ecolor=colors[t], capsize=3, alpha=0.7)
                    all_ys.extend(100 * c for _, _, ci in pts for c in ci)
        base = number(m.eval_value(t, BASE_SET, "accuracy"))
        if base is not None:
            all_ys.append(100 * base)
            ax.axhline(100 * base, color=colors[t], linestyle=":", linewidth=1, label=f"{t}: base student")
    if not any_data:
        _no_data(ax, "mixture results")
    ax.set_xlabel("flawed CoTs in the training set (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks([100 * float(p) for p, _ in curve] or [0, 100])
    _pct_ylim(ax, all_ys)
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy vs fraction of flawed chains of thought")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best")
    _save_png(fig, path)


def plot_losses(m: Metrics, tasks: Sequence[str], trained: Sequence[str], path: Path) -> None:
    colors = _set_colors(trained)
    fig = _new_figure(max(6.0, 5.0 * len(tasks)) + 1.5, 4.2)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, t in zip(axes, tasks, strict=True):
        drawn = False
        for s in trained:
            for r, pts in enumerate(m.loss.get((t, s)) or []):  # one line per training run
                if pts:
                    drawn = True
                    steps, losses = zip(*pts, strict=True)
                    ax.plot(steps, losses, color=colors[s], label=s if r == 0 else None, linewidth=1.2,
                            alpha=0.8, marker="." if len(pts) < 30 else None)
        if not drawn:
            _no_data(ax, "loss logs")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # optimizer steps: no 1.5 ticks
        ax.set_title(t)
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss (completion tokens)")
        ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, title="training set", loc="outside right upper", fontsize="small")
    fig.suptitle("SFT loss curves per training set (one line per training run)")
    _save_png(fig, path)


def plot_closeness(m: Metrics, tasks: Sequence[str], trained: Sequence[str], path: Path) -> None:
    fig = _new_figure(max(6.0, 5.0 * len(tasks)), 4.2)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    colors = _set_colors(trained)
    for ax, t in zip(axes, tasks, strict=True):
        close = m.closeness[t] or {}
        order = list(trained) + [s for s in close if s not in trained]
        names, values = [], []
        for s in order:
            c = close.get(s)
            v = number(c.get("mean_loss")) if isinstance(c, dict) else None
            if v is not None:
                names.append(s)
                values.append(v)
        if not names:
            _no_data(ax, "closeness results")
        else:
            bars = ax.bar(
                range(len(names)), values, color=[colors.get(s, "0.5") for s in names], edgecolor="white"
            )
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize="small", padding=2)
            ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
            ax.margins(y=0.12)
        ax.set_title(t)
        ax.set_xlabel("training set")
        ax.set_ylabel("base student loss per token (lower = closer)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Distributional closeness: the untrained student's loss on each training set")
    _save_png(fig, path)
