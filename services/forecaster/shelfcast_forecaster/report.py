"""HTML report of a backtest: one self-contained ``index.html`` with PNG plots beside it (no JavaScript, no network).

The page shows, in order:
1. the title, the protocol (horizon, frequency, season length, windows, cutoffs, number of series), the metrics
   table of `evaluate` (sorted by scaled pinball, ``chosen`` highlighted) and a sentence giving ``chosen``'s RMSSE
   and scaled pinball as a % change against SeasonalNaive and against the best statsforecast baseline;
2. ``relative.png``: RMSSE and scaled pinball of every model divided by SeasonalNaive's (1.0 = as good as the
   seasonal naive; left out, with a note, when SeasonalNaive is not among the models);
3. ``calibration.png``: each model's p10-p90 coverage against the nominal 0.8, and its bias;
4. ``samples.png``: a few series at the last cutoff (the highest-volume one, the highest-volume one of each demand
   class, then series spread over the volume ranking): recent history, the actuals of the forecast window,
   ``chosen``'s p10-p90 band and p50, and SeasonalNaive's p50 dashed;
5. per cutoff and demand class: the class's share of series, the model ``chosen`` stands for and the ensemble
   members (from ``result.attrs["selection"]``).
Plots use matplotlib's object API only (no pyplot state), so the report can be written from any thread.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from shelfcast.plots import html_page, plain_label, save_figure
from shelfcast_forecaster.baselines import MODELS
from shelfcast_forecaster.data import classify_demand

NAIVE = "SeasonalNaive"
CHOSEN = "chosen"
NOMINAL_COVERAGE = 0.8
DEMAND_CLASSES = ("smooth", "erratic", "intermittent", "lumpy")
HISTORY_SEASONS = 3  # seasons of history drawn before the cutoff in the sample plots
COLORS = {CHOSEN: "tab:orange", NAIVE: "tab:gray"}
DEFAULT_COLOR = "tab:blue"
DPI = 110

EXTRA_CSS = "tr.chosen { background: #ffe7c2; font-weight: bold; }\n"


def write_report(
    result: pd.DataFrame,
    scores: pd.DataFrame,
    df: pd.DataFrame,
    out_dir: Path,
    *,
    title: str,
    season_length: int,
    protocol: dict | None = None,
    samples: int = 6,
) -> Path:
    """Write ``out_dir/index.html`` and its PNG files (see the module doc); returns the path of ``index.html``.

    ``result`` is `backtest`'s output, ``scores`` `evaluate`'s (indexed by model or with a ``model`` column),
    ``df`` the full long-format data. ``protocol`` entries (e.g. horizon, freq, windows) override the ones
    derived from ``result`` and ``df``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = scores.set_index("model") if "model" in scores.columns else scores
    sections = [
        _protocol_html(_protocol(result, df, season_length, protocol)),
        _metrics_html(scores),
        _relative_html(scores, out_dir),
        _calibration_html(scores, out_dir),
        _samples_html(result, df, out_dir, season_length, samples),
        _selection_html(result, df),
    ]
    path = out_dir / "index.html"
    path.write_text(html_page(title, list(sections), EXTRA_CSS), encoding="utf-8")
    return path


# --- 1. protocol, metrics, headline -------------------------------------------------------------------------------


def _protocol(result: pd.DataFrame, df: pd.DataFrame, season_length: int, given: dict | None) -> dict[str, Any]:
    """Protocol entries derived from the frames, overridden by ``given``."""
    cutoffs = sorted(pd.to_datetime(result["cutoff"].unique()))
    horizon = int(result.groupby(["unique_id", "cutoff", "model"]).size().max()) if len(result) else 0
    derived = {
        "horizon": horizon,
        "freq": _infer_freq(df),
        "season_length": season_length,
        "windows": len(cutoffs),
        "cutoffs": ", ".join(f"{c:%Y-%m-%d}" for c in cutoffs),
        "series": int(df["unique_id"].nunique()),
    }
    return derived | dict(given or {})


def _infer_freq(df: pd.DataFrame) -> str:
    dates = pd.DatetimeIndex(np.sort(df["ds"].unique()))
    try:
        return pd.infer_freq(dates) or "irregular"
    except (ValueError, TypeError):  # fewer than 3 dates
        return "unknown"


def _protocol_html(protocol: dict[str, Any]) -> str:
    rows = "".join(
        f"<dt>{html.escape(str(key).replace('_', ' '))}</dt><dd>{html.escape(str(value))}</dd>"
        for key, value in protocol.items()
    )
    return f'<h2>Protocol</h2>\n<dl class="protocol">{rows}</dl>'


def _metrics_html(scores: pd.DataFrame) -> str:
    ordered = scores.sort_values("scaled_pinball", kind="stable", na_position="last")
    table = ordered.to_html(float_format=lambda v: f"{v:.4f}", escape=True, border=0, na_rep="-", index_names=False)
    # pandas gives rows no classes; tag the chosen row (the index is escaped, so "chosen" is literal here)
    table = re.sub(rf"<tr>(\s*<th>{CHOSEN}</th>)", r'<tr class="chosen">\1', table, count=1)
    return (
        "<h2>Metrics</h2>\n"
        f"<p>{html.escape(headline(scores))}</p>\n{table}\n"
        '<p class="note">Lower is better for MASE, RMSSE, WAPE and scaled pinball; bias is (forecast &minus; actual) / '
        "actual (positive: over-forecast); coverage is the share of actuals inside p10&ndash;p90 (nominal 0.8). "
        "Sorted by scaled pinball.</p>"
    )


def headline(scores: pd.DataFrame) -> str:
    """``chosen``'s RMSSE and scaled pinball as % change against SeasonalNaive and the best baseline."""
    if CHOSEN not in scores.index:
        return "No chosen model in these scores."
    parts = [
        _headline_part(scores, metric, label)
        for metric, label in (("rmsse", "RMSSE"), ("scaled_pinball", "scaled pinball"))
    ]
    return "Chosen vs the baselines (lower is better, so negative % is an improvement): " + "; ".join(parts) + "."


def _headline_part(scores: pd.DataFrame, metric: str, label: str) -> str:
    chosen = scores.at[CHOSEN, metric]
    comparisons = []
    if NAIVE in scores.index:
        comparisons.append(f"{_pct(chosen, scores.at[NAIVE, metric])} vs {NAIVE}")
    baselines = scores.loc[scores.index.isin(list(MODELS)), metric].dropna()
    if len(baselines):
        best = str(baselines.idxmin())
        comparisons.append(f"{_pct(chosen, baselines[best])} vs {best}, the best statsforecast baseline")
    return f"{label} {', '.join(comparisons) or 'has no baseline to compare with'}"


def _pct(value: float, reference: float) -> str:
    if not (np.isfinite(value) and np.isfinite(reference)) or reference == 0:
        return "n/a"
    return f"{100 * (value / reference - 1):+.1f}%"


# --- 2. and 3. per-model bar charts -------------------------------------------------------------------------------


def _relative_html(scores: pd.DataFrame, out_dir: Path) -> str:
    heading = f"<h2>Relative to {NAIVE}</h2>\n"
    if NAIVE not in scores.index:
        return heading + f'<p class="note">{NAIVE} is not among the models, so this plot is left out.</p>'
    reference = scores.loc[NAIVE, ["rmsse", "scaled_pinball"]].astype(float)
    if not (np.isfinite(reference).all() and (reference > 0).all()):
        return heading + f'<p class="note">{NAIVE} has no finite, positive RMSSE and scaled pinball; left out.</p>'
    relative = scores[["rmsse", "scaled_pinball"]].astype(float) / reference
    relative = relative.dropna(how="all").sort_values("scaled_pinball", ascending=False, na_position="first")
    fig = _bar_panels(relative, {"rmsse": "RMSSE / SeasonalNaive", "scaled_pinball": "scaled pinball / SeasonalNaive"})
    for ax in fig.axes:
        ax.axvline(1.0, color="black", linewidth=1)
    fig.suptitle(f"Accuracy relative to {NAIVE} (below 1 = better)")
    return heading + save_figure(fig, out_dir / "relative.png", f"RMSSE and scaled pinball relative to {NAIVE}")


def _calibration_html(scores: pd.DataFrame, out_dir: Path) -> str:
    frame = scores[["coverage", "bias"]].astype(float).sort_values("coverage", na_position="first")
    titles = {"coverage": "p10-p90 coverage (dashed: nominal 0.8)", "bias": "bias (forecast - actual) / actual"}
    fig = _bar_panels(frame, titles)
    coverage_ax, bias_ax = fig.axes
    coverage_ax.axvline(NOMINAL_COVERAGE, color="black", linestyle="--", linewidth=1)
    coverage_ax.set_xlim(0, 1.12)
    bias_ax.axvline(0.0, color="black", linewidth=1)
    fig.suptitle("Calibration: interval coverage and bias")
    return "<h2>Calibration</h2>\n" + save_figure(fig, out_dir / "calibration.png", "coverage and bias per model")


def _bar_panels(frame: pd.DataFrame, titles: dict[str, str]) -> Figure:
    """One horizontal bar panel per column of ``frame`` (models as rows, first row at the bottom), values labelled."""
    labels = [plain_label(str(m), 28) for m in frame.index]
    colors = [COLORS.get(str(m), DEFAULT_COLOR) for m in frame.index]
    fig = Figure(figsize=(11, 1.2 + 0.38 * len(frame)), layout="constrained", dpi=DPI)
    axes = fig.subplots(1, len(titles), sharey=True, squeeze=False)[0]
    for ax, (column, panel_title) in zip(axes, titles.items(), strict=True):
        values = frame[column].to_numpy(float)
        bars = ax.barh(labels, np.nan_to_num(values), color=colors)
        texts = ax.bar_label(bars, labels=[f"{v:.3f}" if np.isfinite(v) else "n/a" for v in values], padding=3)
        for text in texts:  # keep labels readable where they cross a reference line
            text.set(fontsize=8, zorder=5, bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.85})
        ax.set_title(panel_title, fontsize=10)
        ax.margins(x=0.15)
        ax.grid(axis="x", alpha=0.3)
    return fig


# --- 4. sample series ---------------------------------------------------------------------------------------------


def pick_series(train: pd.DataFrame, classes: pd.Series, n: int) -> list[str]:
    """``n`` series, deterministically: highest volume, then the top of each demand class, then spread over volume.

    Volume is the sum of ``y`` in ``train``; ties go by ``unique_id``. Returned in order of decreasing volume.
    """
    volume = train.groupby("unique_id")["y"].sum()
    ranked = sorted(volume.index, key=lambda uid: (-volume[uid], str(uid)))
    if n <= 0 or not ranked:
        return []
    candidates = [ranked[0]]
    candidates += [next((u for u in ranked if classes.get(u) == cls), None) for cls in DEMAND_CLASSES]
    candidates += [ranked[round(p)] for p in np.linspace(0, len(ranked) - 1, n)]
    candidates += ranked
    picks = list(dict.fromkeys(c for c in candidates if c is not None))[:n]
    return sorted(picks, key=ranked.index)


def _samples_html(result: pd.DataFrame, df: pd.DataFrame, out_dir: Path, season_length: int, n: int) -> str:
    heading = "<h2>Sample series</h2>\n"
    chosen = result[result["model"] == CHOSEN]
    if chosen.empty or n <= 0:
        return heading + '<p class="note">No chosen forecasts to plot.</p>'
    cutoff = pd.Timestamp(chosen["cutoff"].max())
    train = df[df["ds"] <= cutoff]
    classes = classify_demand(train)
    window = result[result["cutoff"] == cutoff]
    picks = pick_series(train[train["unique_id"].isin(set(window["unique_id"]))], classes, n)
    choice = _chosen_models(result, cutoff)
    fig = _samples_figure(window, df, picks, cutoff, season_length, classes, choice)
    names = ", ".join(html.escape(str(u)) for u in picks)
    caption = (
        f'<p class="note">Last cutoff {cutoff:%Y-%m-%d}; series: {names}. Black: actuals (dots in the forecast '
        f"window); orange: chosen p50 and p10&ndash;p90 band; gray dashed: {NAIVE} p50; dotted: the cutoff.</p>"
    )
    return heading + save_figure(fig, out_dir / "samples.png", "sample series with forecasts") + "\n" + caption


def _chosen_models(result: pd.DataFrame, cutoff: pd.Timestamp) -> dict[str, str]:
    """demand class -> the model ``chosen`` stands for at ``cutoff`` (empty without a recorded selection)."""
    selection = result.attrs.get("selection", {}).get(cutoff)
    return dict(selection.chosen) if selection is not None else {}


def _samples_figure(
    window: pd.DataFrame,
    df: pd.DataFrame,
    picks: list[str],
    cutoff: pd.Timestamp,
    season_length: int,
    classes: pd.Series,
    choice: dict[str, str],
) -> Figure:
    """One panel per picked series (3 per row) with a shared legend on top."""
    ncols = min(3, len(picks))
    nrows = math.ceil(len(picks) / ncols)
    fig = Figure(figsize=(5.2 * ncols, 3.1 * nrows + 0.6), layout="constrained", dpi=DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, uid in zip(axes, picks, strict=False):
        history = df[(df["unique_id"] == uid) & (df["ds"] <= cutoff)].sort_values("ds")
        _plot_series(ax, history.tail(HISTORY_SEASONS * season_length), window[window["unique_id"] == uid], cutoff)
        cls = str(classes.get(uid, "?"))
        ax.set_title(
            f"{plain_label(str(uid), 30)} ({cls}, chosen = {plain_label(choice.get(cls, '?'), 20)})", fontsize=9
        )
    for ax in axes[len(picks) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels), fontsize="small", frameon=False)
    return fig


def _plot_series(ax: Axes, history: pd.DataFrame, window: pd.DataFrame, cutoff: pd.Timestamp) -> None:
    chosen = window[window["model"] == CHOSEN].sort_values("ds")
    naive = window[window["model"] == NAIVE].sort_values("ds")
    actual = pd.concat([history[["ds", "y"]], chosen[["ds", "y"]]]).sort_values("ds")
    ax.plot(actual["ds"], actual["y"], color="black", linewidth=1.2, label="actual")
    ax.plot(chosen["ds"], chosen["y"], "o", color="black", markersize=3)
    ax.fill_between(
        chosen["ds"], chosen["p10"], chosen["p90"], color=COLORS[CHOSEN], alpha=0.25, label="chosen p10-p90"
    )
    ax.plot(chosen["ds"], chosen["p50"], color=COLORS[CHOSEN], linewidth=1.6, label="chosen p50")
    if not naive.empty:
        ax.plot(naive["ds"], naive["p50"], "--", color=COLORS[NAIVE], linewidth=1.3, label=f"{NAIVE} p50")
    ax.axvline(cutoff, color="gray", linestyle=":", linewidth=1, label="cutoff")
    locator = AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_ylim(bottom=0)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)


# --- 5. selection per demand class --------------------------------------------------------------------------------


def selection_table(result: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """One row per (cutoff, demand class): series, share of series, chosen model, ensemble members."""
    rows = []
    for cutoff, selection in sorted(result.attrs.get("selection", {}).items()):
        classes = classify_demand(df[df["ds"] <= cutoff])
        counts = classes.value_counts()
        for cls in sorted(set(selection.chosen) | set(counts.index), key=_class_order):
            rows.append(
                {
                    "cutoff": f"{pd.Timestamp(cutoff):%Y-%m-%d}",
                    "demand class": cls,
                    "series": int(counts.get(cls, 0)),
                    "share": f"{counts.get(cls, 0) / max(len(classes), 1):.1%}",
                    "chosen": selection.chosen.get(cls, "-"),
                    "ensemble members": ", ".join(selection.top.get(cls, [])),
                }
            )
    return pd.DataFrame(rows)


def _class_order(cls: str) -> tuple[int, str]:
    return (DEMAND_CLASSES.index(cls) if cls in DEMAND_CLASSES else len(DEMAND_CLASSES), cls)


def _selection_html(result: pd.DataFrame, df: pd.DataFrame) -> str:
    heading = "<h2>Model choice per demand class</h2>\n"
    table = selection_table(result, df)
    if table.empty:
        return heading + '<p class="note">No selection recorded (result.attrs["selection"] is empty).</p>'
    note = (
        '<p class="note">Classes (Syntetos-Boylan) are computed on each window\'s training part; the choice is the '
        "class's ensemble (the per-quantile mean of the 3 models with the best mean of their scaled pinball and "
        "RMSSE ratios to the class's best), unless a model beats it on both metrics on the inner validation "
        "window.</p>"
    )
    return heading + table.to_html(index=False, escape=True, border=0) + "\n" + note
