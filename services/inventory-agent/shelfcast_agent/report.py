"""HTML report of an agent evaluation: one self-contained ``index.html`` with PNG plots beside it (no JavaScript).

The page shows, in order:
1. the protocol (seeds, periods, warm-up, fitting seeds), the model card's version and training time, and the
   headline: the DQN's mean gap to the optimum where computable and its worst gap to the best classical policy,
   against the issue's bars (2% and 1%);
2. ``gaps.png``: per instance, the DQN's gap to the optimum (DP) and to the best classical policy, with the
   paired 95% interval of the latter;
3. ``costs.png``: per instance, every policy's mean cost per period with its 95% interval, in % above the best
   classical policy's mean cost (0 = as good as it), the optimum as a black mark;
4. ``trajectory.png``: one instance, one seed: inventory position, on hand and orders of the DQN and of capped
   base-stock over the same demand;
5. the per-instance table (costs and gaps).
Plots use matplotlib's object API only (no pyplot state).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from shelfcast.plots import html_page, plain_label, save_figure
from shelfcast_agent.dqn import CLASSICAL
from shelfcast_agent.evaluate import DQN, OPTIMAL, OPTIMAL_POLICY, headline

DPI = 110
COST_AXIS_MAX = 15.0  # % above the best classical policy shown in the cost plot
COLORS = {
    DQN: "tab:orange",
    "newsvendor": "tab:gray",
    "base_stock": "tab:blue",
    "capped_base_stock": "tab:green",
    "s_S": "tab:purple",
    "r_Q": "tab:brown",
    OPTIMAL_POLICY: "black",
}
EXTRA_CSS = ".pass { color: #1a7f37; } .fail { color: #c62828; }\n"


def write_report(
    results: pd.DataFrame,
    table: pd.DataFrame,
    out_dir: Path,
    *,
    title: str = "Inventory agent: DQN against classical policies and the optimum",
    trajectory: pd.DataFrame | None = None,
    trajectory_instance: str | None = None,
    card: dict[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/index.html`` and its PNG files; returns the page's path. ``results`` is `evaluate`'s
    output, ``table`` `summary`'s, ``trajectory`` `evaluate.trajectory`'s (optional), ``card`` the model card."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = [
        _protocol_html(results, card),
        _headline_html(table),
        _gaps_html(table, out_dir),
        _costs_html(results, table, out_dir),
        _trajectory_html(trajectory, trajectory_instance, out_dir),
        _table_html(table),
    ]
    page = out_dir / "index.html"
    page.write_text(html_page(title, sections, EXTRA_CSS), encoding="utf-8")
    return page


def _protocol_html(results: pd.DataFrame, card: dict[str, Any] | None) -> str:
    protocol = dict(results.attrs.get("protocol", {}))
    seeds = protocol.get("seeds")
    if isinstance(seeds, list) and seeds:
        protocol["seeds"] = f"{len(seeds)} ({seeds[0]}..{seeds[-1]})"
    if card:
        protocol["model version"] = card.get("version")
        protocol["training wall time"] = f"{card.get('train_seconds')} s"
        protocol["action deltas (mean demands)"] = card.get("action_deltas")
        protocol["margin"] = card.get("margin")
    rows = "".join(
        f"<dt>{html.escape(str(k).replace('_', ' '))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in protocol.items()
    )
    return f'<h2>Protocol</h2>\n<dl class="protocol">{rows}</dl>'


def _headline_html(table: pd.DataFrame) -> str:
    head = headline(table)
    parts = []
    mean_gap = head.get(f"mean_gap_{DQN}_vs_optimal_pct")
    if mean_gap is not None:
        ok = head.get("meets_optimal_bar")
        parts.append(
            f'<li class="{"pass" if ok else "fail"}">DQN mean gap to the optimum over the '
            f"{head['optimum_computable']} instances where the DP is computable: {mean_gap:+.2f}% "
            "(bar: at most 2%)</li>"
        )
    worst = head.get(f"worst_{DQN}_vs_best_classical_pct")
    if worst is not None:
        ok = head.get("meets_classical_bar")
        parts.append(
            f'<li class="{"pass" if ok else "fail"}">DQN against the best classical policy, worst instance '
            f"({html.escape(str(head['worst_instance']))}): {worst:+.2f}% (bar: at most 1% worse)</li>"
        )
    classical = head.get("mean_gap_vs_optimal_pct", {})
    if classical:
        text = ", ".join(f"{name} {gap:+.2f}%" for name, gap in classical.items() if gap is not None)
        parts.append(f"<li>Classical policies' mean gap to the optimum: {html.escape(text)}</li>")
    if not parts:
        return ""
    return "<h2>Headline</h2>\n<ul>" + "".join(parts) + "</ul>"


def _gaps_html(table: pd.DataFrame, out_dir: Path) -> str:
    column = f"{DQN}_vs_best_classical_pct"
    if column not in table.columns and f"gap_{DQN}_pct" not in table.columns:
        return ""
    labels = [plain_label(str(i), 34) for i in table.index]
    fig = Figure(figsize=(11, 1.4 + 0.34 * len(table)), layout="constrained", dpi=DPI)
    left, right = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(table))
    optimal_gap = table.get(f"gap_{DQN}_pct", pd.Series(math.nan, index=table.index)).to_numpy(float)
    left.barh(y, np.nan_to_num(optimal_gap), color=COLORS[DQN])
    for yi, value in zip(y, optimal_gap, strict=True):
        left.annotate("n/a" if not np.isfinite(value) else f"{value:+.2f}", (0, yi), fontsize=7, va="center")
    left.axvline(0, color="black", linewidth=1)
    left.axvline(2, color="tab:red", linestyle="--", linewidth=1)
    left.set_title("DQN vs optimum (DP), % (dashed: 2% bar on the mean)", fontsize=10)
    if column in table.columns:
        gap = table[column].to_numpy(float)
        low = table.get(f"{column[:-4]}_ci_low", pd.Series(gap, index=table.index)).to_numpy(float)
        high = table.get(f"{column[:-4]}_ci_high", pd.Series(gap, index=table.index)).to_numpy(float)
        errors = np.vstack([np.maximum(gap - low, 0), np.maximum(high - gap, 0)])
        right.barh(y, gap, xerr=errors, color=COLORS[DQN], ecolor="black", capsize=2)
        right.axvline(0, color="black", linewidth=1)
        right.axvline(1, color="tab:red", linestyle="--", linewidth=1)
        right.set_title("DQN vs best classical, % with paired 95% CI (dashed: 1% bar)", fontsize=10)
    right.set_yticks(y, labels)
    left.set_yticks(y, labels)
    left.invert_yaxis()
    for ax in (left, right):
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    note = '<p class="note">Negative is better for the DQN. n/a: the DP is not computable for that instance.</p>'
    return "<h2>Gaps per instance</h2>\n" + save_figure(fig, out_dir / "gaps.png", "gaps per instance") + note


def _costs_html(results: pd.DataFrame, table: pd.DataFrame, out_dir: Path) -> str:
    if "best_classical_cost" not in table.columns:
        return ""
    policies = [p for p in dict.fromkeys(results["policy"]) if p != OPTIMAL]
    fig = Figure(figsize=(11, 1.6 + 0.42 * len(table)), layout="constrained", dpi=DPI)
    ax = fig.subplots()
    offsets = np.linspace(-0.3, 0.3, max(len(policies), 1))
    indexed = results.set_index(["instance", "policy"])
    clipped: list[tuple[float, float, str]] = []
    for offset, policy in zip(offsets, policies, strict=True):
        ys, xs, lo, hi = [], [], [], []
        for k, instance in enumerate(table.index):
            if (instance, policy) not in indexed.index:
                continue
            row = indexed.loc[(instance, policy)]
            best = table.at[instance, "best_classical_cost"]
            scale = abs(best) or math.nan
            x = 100 * (row["mean_cost"] - best) / scale
            if x > COST_AXIS_MAX:
                clipped.append((k + offset, x, policy))
                continue
            ys.append(k + offset)
            xs.append(x)
            lo.append(100 * (row["mean_cost"] - row["ci_low"]) / scale)
            hi.append(100 * (row["ci_high"] - row["mean_cost"]) / scale)
        ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", markersize=3.5, capsize=2, color=COLORS.get(policy), label=policy)
    for y, x, policy in clipped:
        ax.annotate(
            f"{policy} {x:+.0f}% >", (COST_AXIS_MAX, y), fontsize=6, ha="right", va="center", color=COLORS.get(policy)
        )
    if OPTIMAL in table.columns:
        optimum = 100 * (table[OPTIMAL] - table["best_classical_cost"]) / table["best_classical_cost"].abs()
        ax.plot(optimum.to_numpy(float), np.arange(len(table)), "|", color="black", markersize=14, label="optimum (DP)")
    ax.axvline(0.0, color="gray", linewidth=1)
    ax.set_xlim(right=COST_AXIS_MAX)
    ax.set_yticks(np.arange(len(table)), [plain_label(str(i), 34) for i in table.index])
    ax.invert_yaxis()
    ax.set_xlabel("mean cost per period vs the best classical policy's, % (lower is better); bars: 95% CI over seeds")
    ax.tick_params(labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside upper center", ncols=min(len(policies) + 1, 8), fontsize="small", frameon=False)
    note = f'<p class="note">Policies more than {COST_AXIS_MAX:.0f}% worse are written at the right edge.</p>'
    return "<h2>Cost per policy</h2>\n" + save_figure(fig, out_dir / "costs.png", "relative cost per policy") + note


def _trajectory_html(trajectory: pd.DataFrame | None, instance: str | None, out_dir: Path) -> str:
    if trajectory is None or trajectory.empty:
        return ""
    policies = list(dict.fromkeys(trajectory["policy"]))
    fig = Figure(figsize=(11, 5.2), layout="constrained", dpi=DPI)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    width = 0.8 / max(len(policies), 1)
    for k, policy in enumerate(policies):
        part = trajectory[trajectory["policy"] == policy]
        color = COLORS.get(policy, "tab:blue")
        top.step(part["period"], part["inventory_position"], where="post", color=color, label=f"{policy}: position")
        top.step(part["period"], part["on_hand"], where="post", color=color, linestyle=":", label=f"{policy}: on hand")
        bottom.bar(
            part["period"] + (k - (len(policies) - 1) / 2) * width, part["order"], width, color=color, label=policy
        )
    demand = trajectory[trajectory["policy"] == policies[0]]
    bottom.plot(demand["period"], demand["demand"], "k.", markersize=3, label="demand")
    top.axhline(0, color="gray", linewidth=0.8)
    top.set_ylabel("units")
    bottom.set_ylabel("order / demand")
    bottom.set_xlabel("period (after the warm-up)")
    top.legend(fontsize="small", ncols=2)
    bottom.legend(fontsize="small", ncols=len(policies) + 1)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    total = trajectory.groupby("policy")["net_cost"].mean()
    costs = ", ".join(f"{html.escape(str(p))} {total[p]:.2f}" for p in policies)
    note = f'<p class="note">Same seed for both; mean net cost per period over this window: {costs}.</p>'
    heading = f"<h2>Example trajectory: {html.escape(instance or '')}</h2>\n"
    return heading + save_figure(fig, out_dir / "trajectory.png", "trajectory of the DQN and capped base-stock") + note


def _table_html(table: pd.DataFrame) -> str:
    shown = [c for c in table.columns if c not in ("best_classical_cost",)]
    frame = table[shown].copy()
    frame.index.name = None
    text = frame.to_html(float_format=lambda v: f"{v:.3f}", border=0, na_rep="-", escape=True)
    return "<h2>Per instance</h2>\n" + text


def pick_trajectory_instance(table: pd.DataFrame, names: Sequence[str]) -> str:
    """The instance where the DQN differs most from the best classical policy (either way), else the first."""
    column = f"{DQN}_vs_best_classical_pct"
    if column in table.columns and table[column].notna().any():
        return str(table[column].abs().idxmax())
    return str(names[0])


__all__ = ["CLASSICAL", "pick_trajectory_instance", "write_report"]
