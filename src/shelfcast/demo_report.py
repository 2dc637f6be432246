"""The demo's HTML report: what the pipeline did, as plots, beside the figures of `summary.json`.

Sample SKUs are the busiest ones the agent replay kept day-by-day series for. Plots: daily demand against the
one-day-ahead forecast with its quantile band; the replayed inventory with the agent's reorders and the ERP's
receipts; price changes; the agent's cost and fill rate against capped base-stock on the same demand; end-to-end
latency.
"""

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from shelfcast import trace
from shelfcast.plots import html_page, save_figure

SAMPLE_SKUS = 4
POLICIES = ("agent", "capped_base_stock")


def write_report(
    out_dir: Path, summary: dict, observed: trace.Observed, replay: dict, latencies: dict[str, list[int]]
) -> Path:
    skus = sample_skus(observed, replay)
    sections = [
        _figures_section(summary),
        _demand_section(out_dir, observed, skus),
        _inventory_section(out_dir, observed, replay, skus),
        _prices_section(out_dir, observed),
        _cost_section(out_dir, replay),
        _latency_section(out_dir, latencies, summary),
    ]
    page = out_dir / "index.html"
    page.write_text(html_page("Shelfcast demo", sections), encoding="utf-8")
    return page


def headline(summary: dict) -> dict[str, str]:
    """The figures a reader wants first, as text: printed by the demo and atop the report."""
    windows, traced, latency = summary["windows_in_redis"], summary["trace"], summary["latency"]
    cost = summary["cost_vs_baseline"] or {}
    fill = {policy: (cost.get(policy) or {}).get("fill_rate") for policy in ("agent", "capped_base_stock")}
    stage = {name: latency[f"{name}_s"] for name in ("close_to_reorder", "close_to_window")}
    return {
        "events sent": f"{summary['events']['sent']:,}",
        "feature windows (1m / 1h / 1d)": " / ".join(f"{windows[g]:,}" for g in ("1m", "1h", "1d")),
        "dead letters by stage": json.dumps(summary["dead_letters"]),
        "forecasts (fallback)": f"{summary['forecasts']['published']:,} ({summary['forecasts']['fallback']:,})",
        "reorders, traced to forecast / window / its events": (
            f"{traced['reorders']:,}: {traced['with_forecast']:,} / {traced['with_daily_window']:,} / "
            f"{traced['window_equals_its_events']:,}"
        ),
        "receipts": f"{summary['inventory']['receipts']:,}",
        "purchase -> reorder p50 / p99 (target p99)": (
            f"{latency['purchase_to_reorder_s']['p50']} s / {latency['purchase_to_reorder_s']['p99']} s "
            f"({latency['target_p99_s']} s)"
        ),
        "window close -> reorder p50 / p99 (of it, the features job)": (
            f"{stage['close_to_reorder']['p50']} s / {stage['close_to_reorder']['p99']} s "
            f"({stage['close_to_window']['p50']} s / {stage['close_to_window']['p99']} s)"
        ),
        "price changes": f"{summary['decisions']['price_changes']:,}",
        "cost agent / capped base-stock (replayed)": str(cost.get("cost_ratio")),
        "fill rate agent, capped base-stock (replayed)": f"{fill['agent']}, {fill['capped_base_stock']}",
        "wall time": f"{summary['run']['total_seconds']:.0f} s",
    }


def sample_skus(observed: trace.Observed, replay: dict) -> list[str]:
    """The busiest SKUs by units bought, among those the replay has series for (all SKUs without a replay)."""
    units: dict[str, int] = defaultdict(int)
    for window in observed.daily_windows.values():
        units[window.sku] += window.units
    candidates = set(replay.get("series", {})) or set(units)
    return sorted(candidates, key=lambda sku: (-units.get(sku, 0), sku))[:SAMPLE_SKUS]


def _days(ms: list[int]) -> np.ndarray:
    return np.array(ms, dtype="datetime64[ms]")


def _grid(n: int) -> tuple[Any, list[Axes]]:
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), sharex=True, squeeze=False, layout="constrained")
    return fig, list(axes[:, 0])


def _figures_section(summary: dict) -> str:
    top = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in headline(summary).items())
    rows = "".join(
        f"<tr><th>{html.escape(key)}</th><td style='text-align:left'><code>{html.escape(json.dumps(value))}</code>"
        "</td></tr>"
        for key, value in summary.items()
    )
    return (
        f"<h2>Headline</h2>\n<table><tbody>{top}</tbody></table>\n"
        f"<h2>All figures</h2>\n<table><tbody>{rows}</tbody></table>\n<p class='note'>Also in summary.json.</p>"
    )


def _demand_section(out_dir: Path, observed: trace.Observed, skus: list[str]) -> str:
    if not skus:
        return "<h2>Demand and forecasts</h2><p>No daily windows: nothing to plot.</p>"
    ahead = {(f.record.sku, f.record.start): f.record for f in observed.forecasts}  # the newest for each day wins
    fig, axes = _grid(len(skus))
    for ax, sku in zip(axes, skus, strict=True):
        days = sorted((w for (s, _), w in observed.daily_windows.items() if s == sku), key=lambda w: w.window_end)
        ax.plot(_days([w.window_start for w in days]), [w.units for w in days], "k.-", label="units bought")
        made = [(w, ahead[(sku, w.window_start)]) for w in days if (sku, w.window_start) in ahead]
        if made:
            names = sorted(made[0][1].quantiles, key=lambda q: int(q[1:]))
            x = _days([w.window_start for w, _ in made])
            low, high = ([f.quantiles[q][0] for _, f in made] for q in (names[0], names[-1]))
            ax.fill_between(x, low, high, alpha=0.3, label=f"forecast {names[0]}-{names[-1]}")
            ax.plot(x, [f.quantiles["p50"][0] for _, f in made], "C0-", label="forecast p50")
        ax.set_title(sku, loc="left", fontsize=9)
        ax.set_ylabel("units / day")
    axes[0].legend(loc="upper right", fontsize=8)
    note = (
        "<p class='note'>Each day's forecast is the one the forecaster published when the day before closed "
        "(one day ahead). Fallback forecasts (too little history for the network) are included.</p>"
    )
    return "<h2>Demand and forecasts</h2>\n" + save_figure(fig, out_dir / "demand.png", "demand vs forecast") + note


def _inventory_section(out_dir: Path, observed: trace.Observed, replay: dict, skus: list[str]) -> str:
    if not skus:
        return ""
    fig, axes = _grid(len(skus))
    for ax, sku in zip(axes, skus, strict=True):
        series = replay.get("series", {}).get(sku)
        if series:
            x = _days(series["day_ms"])
            ax.step(x, series["agent"]["position"], where="post", label="inventory position (replayed)")
            ax.step(x, series["agent"]["on_hand"], where="post", label="on hand (replayed)")
        reorders = [r.record for r in observed.reorders if r.record.sku == sku]
        ax.scatter(
            _days([trace.decision_period(r) for r in reorders]),
            [r.inventory_position for r in reorders],
            c="C3",
            marker="v",
            s=[12 + r.qty for r in reorders],
            label="reorder (position when decided; size: qty)",
        )
        due = {r.decision_id: r.expected_at for r in reorders if r.expected_at is not None}
        receipts = [r.record for r in observed.receipts if r.record.decision_id in due]
        ax.scatter(
            _days([due[str(r.decision_id)] for r in receipts]),
            [r.qty for r in receipts],
            c="C2",
            marker="^",
            label="receipt (qty)",
        )
        ax.set_title(sku, loc="left", fontsize=9)
        ax.set_ylabel("units")
    axes[0].legend(loc="upper right", fontsize=8)
    note = (
        "<p class='note'>Reorders (at their decision day) and receipts (at the day the ERP simulator delivered them) "
        "are the records on Kafka; the lines are "
        "`shelfcast agent replay` of the agent's orders on the demand that happened, day by day.</p>"
    )
    return "<h2>Inventory, reorders, receipts</h2>\n" + save_figure(fig, out_dir / "inventory.png", "inventory") + note


def _prices_section(out_dir: Path, observed: trace.Observed) -> str:
    changes: dict[str, list] = defaultdict(list)
    for change in observed.prices:
        changes[change.record.sku].append(change.record)
    if not changes:
        return "<h2>Price changes</h2><p>The agent changed no price in this run.</p>"
    busiest = sorted(changes, key=lambda sku: (-len(changes[sku]), sku))[:6]
    fig, ax = plt.subplots(figsize=(10, 3.2), layout="constrained")
    for sku in busiest:
        steps = sorted(changes[sku], key=trace.decision_period)
        x = _days([trace.decision_period(steps[0])] + [trace.decision_period(c) for c in steps])
        y = [1.0] + [c.new_price / steps[0].old_price for c in steps]
        ax.step(x, y, where="post", marker="o", label=sku)
    ax.set_ylabel("price / price before the first change")
    ax.legend(fontsize=8)
    note = (
        f"<p class='note'>{len(observed.prices)} price changes on {len(changes)} SKUs, the busiest shown, by decision "
        "day. The simulated storefront does not react to them: they are decisions only.</p>"
    )
    return "<h2>Price changes</h2>\n" + save_figure(fig, out_dir / "prices.png", "price changes") + note


def _cost_section(out_dir: Path, replay: dict) -> str:
    totals = replay.get("totals")
    if not totals:
        return "<h2>Cost and fill rate</h2><p>No replay: nothing to compare.</p>"
    fig, (cost_ax, fill_ax) = plt.subplots(1, 2, figsize=(10, 3.2), layout="constrained")
    bottom = [0.0, 0.0]
    for part in ("holding", "shortage", "ordering"):
        values = [totals[p].get(part, 0.0) for p in POLICIES]
        cost_ax.bar(POLICIES, values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    cost_ax.set_ylabel("total cost")
    cost_ax.legend(fontsize=8)
    fill_ax.bar(POLICIES, [totals[p]["fill_rate"] for p in POLICIES], color=["C0", "C7"])
    fill_ax.set_ylim(0, 1)
    fill_ax.set_ylabel("fill rate")
    ratio = totals.get("cost_ratio")
    note = (
        f"<p class='note'>Cost ratio agent / capped base-stock: {ratio:.3f}. Both replayed on the same demand, "
        "lead times and costs (`shelfcast agent replay`); lost sales.</p>"
        if ratio is not None
        else ""
    )
    return "<h2>Cost and fill rate vs capped base-stock</h2>\n" + save_figure(fig, out_dir / "cost.png", "cost") + note


def _latency_section(out_dir: Path, latencies: dict[str, list[int]], summary: dict) -> str:
    to_reorder, after_close = latencies["purchase_to_reorder"], latencies["close_to_reorder"]
    if not to_reorder:
        return "<h2>End-to-end latency</h2><p>No purchase led to a reorder.</p>"
    latency = summary["latency"]
    fig, ax = plt.subplots(figsize=(10, 3.2), layout="constrained")
    ax.hist([ms / 1000 for ms in to_reorder], bins=60, label="purchase -> reorder")
    ax.hist([ms / 1000 for ms in after_close], bins=60, alpha=0.7, label="window close -> reorder")
    ax.axvline(latency["target_p99_s"], color="C3", linestyle="--", label="target for p99")
    ax.set_xlabel("seconds (broker timestamps)")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    note = (
        f"<p class='note'>A day lasts {latency['window_s']:g} s of wall time here, so a purchase waits up to that "
        "long for its daily window to close; the target is 2 s plus the window.</p>"
    )
    return "<h2>End-to-end latency</h2>\n" + save_figure(fig, out_dir / "latency.png", "latency") + note
