"""Prometheus metrics of the inventory agent (`shelfcast_agent_*`)."""

from prometheus_client import Counter, Gauge, Histogram

from shelfcast_agent.state import PurchaseFlow, StockTotals

DECISIONS = Counter(
    "shelfcast_agent_decisions",
    "Decisions made, by policy and kind (reorder: an order; hold: no order this period; price: a price change)",
    ["policy", "kind"],
)
FALLBACKS = Counter(
    "shelfcast_agent_fallbacks",
    "Decisions that fell back to capped base-stock, by why (stale_forecast, missing_forecast, no_model, "
    "q_out_of_range, policy_error)",
    ["reason"],
)
DECISION_SECONDS = Histogram(
    "shelfcast_agent_decision_latency_seconds",
    "From the triggering record being consumed to the broker acknowledging the decision",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCH_SECONDS = Histogram(
    "shelfcast_agent_batch_duration_seconds",
    "One transaction: reading state, applying records, deciding, MULTI/EXEC",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
ORDER_UNITS = Counter("shelfcast_agent_orders_units", "Units ordered on shelfcast.reorders")
BUDGET_CUTS = Counter("shelfcast_agent_budget_cut", "Orders cut down to fit the budget per period")
RECORDS = Counter(
    "shelfcast_agent_records_consumed",
    "Records consumed, by source (forecast, event, receipt; sweep: its own failed decisions) and outcome",
    ["source", "outcome"],
)
STATE_SKUS = Gauge("shelfcast_agent_state_skus", "SKUs with inventory state in Redis")
LAST_DECISION_TIMESTAMP = Gauge(
    "shelfcast_agent_last_decision_timestamp_seconds", "Unix time of the newest decision confirmed by the broker"
)
RECOVERED = Counter(
    "shelfcast_agent_recovered_decisions",
    "Unconfirmed decisions found at start-up or after a failed delivery: already on the topic, or re-sent",
    ["outcome"],
)
CONFLICTS = Counter("shelfcast_agent_transaction_conflicts", "State transactions retried because a watched key changed")
REQUEST_SECONDS = Histogram(
    "shelfcast_agent_request_duration_seconds",
    "HTTP request latency",
    ["method", "route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
UNITS_DEMANDED = Counter("shelfcast_agent_units_demanded", "Units of purchase demand applied to the inventory state")
UNITS_FILLED = Counter(
    "shelfcast_agent_units_filled",
    "Units of purchase demand served from stock on hand (fill rate: rate(filled) / rate(demanded))",
)
STOCKOUTS = Counter("shelfcast_agent_stockouts", "Purchases that found less on hand than they asked for")
INVENTORY_UNITS = Gauge(
    "shelfcast_agent_inventory_units",
    "Units summed over SKUs after the newest applied batch: on_hand (backorders count as 0) or pipeline (on order)",
    ["kind"],
)
INVENTORY_VALUE = Gauge(
    "shelfcast_agent_inventory_value",
    "Unit cost x units on hand, summed over SKUs (unit_cost from the SKU parameters; their default is 1.0)",
)
EMITTED = Counter(
    "shelfcast_agent_emitted",
    "Decision records acknowledged by the broker, by topic (reorders, prices); re-sent ones count again",
    ["topic"],
)
SKU_DECISIONS = Counter(
    "shelfcast_agent_sku_decisions",
    "SKU-periods decided (orders and holds), on forecasts or fallbacks; one series from the start, so that an alert"
    " can see it not increase",
)
NEWEST_FORECAST = Gauge(
    "shelfcast_agent_newest_forecast_timestamp_seconds",
    "issued_at of the newest forecast the agent consumed (kept in Redis across restarts); until one comes, when the"
    " agent started waiting for one (its decision clock's first period, or its start)",
)
FORECAST_MAX_AGE = Gauge(
    "shelfcast_agent_forecast_max_age_seconds",
    "The agent's forecast_max_age_s: a forecast older than this is stale and the agent decides on a fallback",
)
CLOCK_PERIOD = Gauge(
    "shelfcast_agent_decision_period_start_timestamp_seconds",
    "Start of the decision clock's current period (forecast periods, purchase/return time, optionally the wall clock)",
)
STATE_RESETS = Counter(
    "shelfcast_agent_state_resets",
    "SKU states in Redis that did not parse, reset to the SKU's defaults (the old value kept at {ks}:corrupt:{sku})",
)
EMITTED_TOPIC = {"reorder": "reorders", "price": "prices"}
for _topic in EMITTED_TOPIC.values():
    EMITTED.labels(topic=_topic)  # exposed at 0 before the first decision


def count_purchases(flow: PurchaseFlow) -> None:
    UNITS_DEMANDED.inc(flow.demanded)
    UNITS_FILLED.inc(flow.filled)
    STOCKOUTS.inc(flow.stockouts)


def show_totals(totals: StockTotals) -> None:
    INVENTORY_UNITS.labels(kind="on_hand").set(totals.on_hand)
    INVENTORY_UNITS.labels(kind="pipeline").set(totals.pipeline)
    INVENTORY_VALUE.set(totals.value)
