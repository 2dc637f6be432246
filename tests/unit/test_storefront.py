import datetime
import inspect
import itertools

import numpy as np
import pandas as pd
import pytest

from shelfcast.contracts import Event
from shelfcast_ingest.storefront import Storefront, StorefrontConfig

SMALL = StorefrontConfig(skus=30, days=14, seed=7)
MESSY = StorefrontConfig(skus=30, days=14, seed=7, duplicate_rate=0.05, disorder_rate=0.05)
COUNTS = ["views", "clicks", "carts", "purchases"]


def first_deliveries(events: list[dict]) -> list[dict]:
    seen: dict[str, dict] = {}
    for event in events:
        if event["event_id"] in seen:
            assert event == seen[event["event_id"]], "a duplicate must repeat the original exactly"
        else:
            seen[event["event_id"]] = event
    return list(seen.values())


def test_every_event_validates_against_the_contract() -> None:
    events = list(Storefront(MESSY).events())
    assert {e["type"] for e in events} == {"view", "click", "cart", "purchase", "return"}
    for event in events:
        parsed = Event.model_validate(event)
        assert parsed.currency == "EUR"
        assert parsed.channel in {"web", "app"}
        assert parsed.session_id
    assert all(e["qty"] == 1 for e in events if e["type"] in ("view", "click"))
    assert all(1 <= e["qty"] <= 3 for e in events if e["type"] in ("cart", "purchase"))


def test_events_are_generated_lazily() -> None:
    stream = Storefront(StorefrontConfig(skus=1000, days=365)).events()
    assert inspect.isgenerator(stream)
    assert len(list(itertools.islice(stream, 1000))) == 1000


def test_same_seed_same_storefront_different_seed_different() -> None:
    a, b, c = Storefront(MESSY), Storefront(MESSY), Storefront(StorefrontConfig(skus=30, days=14, seed=8))
    pd.testing.assert_frame_equal(a.catalog, b.catalog)
    pd.testing.assert_frame_equal(a.daily_history(), b.daily_history())
    assert list(a.events()) == list(b.events())
    assert not a.catalog["base_demand"].equals(c.catalog["base_demand"])
    assert not a.daily_history()["y"].equals(c.daily_history()["y"])
    assert list(itertools.islice(a.events(), 100)) != list(itertools.islice(c.events(), 100))


def test_daily_history_is_exactly_the_aggregated_events() -> None:
    storefront = Storefront(MESSY)
    events = pd.DataFrame(first_deliveries(list(storefront.events())))
    events["ds"] = pd.to_datetime(events["ts"], unit="ms", utc=True).dt.tz_localize(None).dt.floor("D")
    grouped = events.groupby(["sku", "ds", "type"])
    counts = grouped.size().unstack(fill_value=0)
    units = grouped["qty"].sum().unstack(fill_value=0)

    history = storefront.daily_history()
    assert len(history) == 30 * 14
    assert not history.duplicated(["unique_id", "ds"]).any()
    expected = history.set_index(["unique_id", "ds"])
    actual = pd.DataFrame(
        {
            "y": units["purchase"],
            "views": counts["view"],
            "clicks": counts["click"],
            "carts": counts["cart"],
            "purchases": counts["purchase"],
            "returns": units["return"],
        }
    )
    actual = actual.reindex(expected.index, fill_value=0)
    pd.testing.assert_frame_equal(actual, expected[actual.columns], check_dtype=False, check_names=False)
    assert expected["returns"].sum() > 0
    # Events carry the day's selling price.
    sold = events[events["type"] != "return"].set_index(["sku", "ds"])["price"]
    assert np.allclose(sold.to_numpy(), expected.loc[sold.index, "price"].to_numpy())


def test_demand_is_heavy_tailed() -> None:
    history = Storefront(StorefrontConfig(skus=300, days=60, seed=1)).daily_history()
    zero_share = history.groupby("unique_id")["y"].apply(lambda y: (y == 0).mean())
    assert (zero_share > 0.5).mean() >= 0.3
    mean_units = history.groupby("unique_id")["y"].mean().sort_values(ascending=False)
    assert mean_units.iloc[0] >= 10 and mean_units.iloc[:3].min() >= 5
    assert set(Storefront(StorefrontConfig(skus=300, days=1, seed=1)).catalog["demand_class"]) >= {
        "intermittent",
        "smooth",
    }


def test_promotions_lift_demand() -> None:
    history = Storefront(StorefrontConfig(skus=300, days=60, seed=2)).daily_history()
    promoted = history[history.groupby("unique_id")["promo"].transform("max") == 1]
    assert promoted["promo"].mean() > 0.02
    by_promo = promoted.groupby(["unique_id", "promo"])["y"].mean().unstack()
    assert by_promo[1].sum() > 1.2 * by_promo[0].sum()
    # On promo days the price is below the SKU's usual price.
    usual_price = promoted.groupby("unique_id")["price"].transform("max")
    assert (promoted["price"] < usual_price)[promoted["promo"] == 1].all()


def delivery_stats(config: StorefrontConfig) -> tuple[float, float, int]:
    """Share of duplicated event_ids, share of first deliveries older than an event delivered before, worst lag."""
    seen: set[str] = set()
    duplicates = late = 0
    newest = worst_lag = 0
    for event in Storefront(config).events():
        if event["event_id"] in seen:
            duplicates += 1
        else:
            seen.add(event["event_id"])
            late += event["ts"] < newest
        worst_lag = max(worst_lag, newest - event["ts"])
        newest = max(newest, event["ts"])
    return duplicates / len(seen), late / len(seen), worst_lag


def test_duplicates_and_disorder_follow_the_configured_rates() -> None:
    duplicated, late, worst_lag = delivery_stats(MESSY)
    assert duplicated == pytest.approx(0.05, abs=0.01)
    assert late == pytest.approx(0.05, abs=0.01)
    assert 0 < worst_lag <= MESSY.max_disorder_seconds * 1000


def test_no_duplicates_or_disorder_by_default() -> None:
    assert delivery_stats(SMALL) == (0, 0, 0)


def test_funnel_narrows_and_every_purchase_follows_a_cart_click_and_view() -> None:
    history = Storefront(SMALL).daily_history()
    views, clicks, carts, purchases = (history[c].sum() for c in COUNTS)
    assert views > clicks > carts >= purchases > 0
    assert 0.05 <= clicks / views <= 0.15
    assert 0.2 <= carts / clicks <= 0.4
    assert 0.3 <= purchases / carts <= 0.6

    events = pd.DataFrame(list(Storefront(SMALL).events()))
    shopping = events[events["type"] != "return"]
    steps = shopping.groupby(["session_id", "sku", "type"])["ts"].min().unstack()
    bought = steps[steps["purchase"].notna()]
    assert (bought["view"] <= bought["click"]).all()
    assert (bought["click"] <= bought["cart"]).all()
    assert (bought["cart"] <= bought["purchase"]).all()


def test_timestamps_follow_a_daily_profile() -> None:
    events = pd.DataFrame(list(Storefront(SMALL).events()))
    hours = pd.to_datetime(events["ts"], unit="ms", utc=True).dt.hour.value_counts()
    assert hours.loc[[19, 20]].sum() > 5 * hours.loc[[3, 4]].sum()
    start = datetime.datetime.combine(SMALL.start, datetime.time(), tzinfo=datetime.UTC).timestamp() * 1000
    assert start <= events["ts"].min() and events["ts"].max() < start + SMALL.days * 86_400_000


@pytest.mark.parametrize(
    "bad", [{"skus": 0}, {"currency": "eur"}, {"duplicate_rate": 1.5}, {"max_disorder_seconds": -1}, {"seed": -1}]
)
def test_config_is_validated(bad: dict) -> None:
    with pytest.raises(ValueError):
        StorefrontConfig(**bad)
