"""Schemathesis against the OpenAPI specs of ingest, the forecaster and the agent, on the real broker and Redis.

Each app runs in process (ASGI) with its lifespan, so the forecaster serves a real model and the agent real state.
Per operation a bounded number of cases, positive and negative, half of the per-SKU ones on SKUs seeded with
history (forecaster) or inventory state (agent) so that the 200 paths are reached, not only 404s. Every response
must be no 5xx and conform to the spec: listed status, content type, headers and body schema. The read APIs also
answer every case sent without a key, or with a wrong one or ingest's write key, with the same 401.

The totals (cases per operation, by status) are printed and written to reports/fuzz/api.json.
"""

import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import get_client, shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shelfcast.contracts import FeatureWindow
from shelfcast.kafka import ensure_topics
from shelfcast.settings import Settings, TopicNames
from shelfcast.store import FeatureStore, connect_redis
from shelfcast_agent.app import create_app as create_agent_app
from shelfcast_agent.settings import AgentSettings
from shelfcast_agent.state import InventoryState, Outstanding, inventory_key
from shelfcast_forecaster.app import create_app as create_forecaster_app
from shelfcast_forecaster.registry import ModelRegistry
from shelfcast_forecaster.settings import ForecasterSettings
from shelfcast_forecaster.train import train_and_publish
from shelfcast_ingest.app import create_app as create_ingest_app
from shelfcast_ingest.settings import IngestSettings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WRITE_KEY = "fuzz-write-key"
DAY_MS = 86_400_000
HISTORY_DAYS = 40
CASES_PER_OPERATION = 120  # x 4 API operations; the module takes about 2 minutes on 2 busy cores
CASES_PER_PROBE = 15  # /healthz, /readyz: no input to speak of
CASES_WITHOUT_A_READ_KEY = 15  # per read operation and kind of wrong credentials
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# (service, method, path): every operation of the three specs; test_every_operation_is_fuzzed keeps it complete
OPERATIONS = [
    ("ingest", "POST", "/v1/events"),
    ("ingest", "GET", "/healthz"),
    ("ingest", "GET", "/readyz"),
    ("forecaster", "GET", "/v1/forecast/{sku}"),
    ("forecaster", "POST", "/v1/forecast"),
    ("forecaster", "GET", "/healthz"),
    ("forecaster", "GET", "/readyz"),
    ("agent", "GET", "/v1/inventory/{sku}"),
    ("agent", "GET", "/healthz"),
    ("agent", "GET", "/readyz"),
]
READ_PROTECTED = [(s, m, p) for s, m, p in OPERATIONS if s != "ingest" and p.startswith("/v1/")]

TOTALS: dict[str, Counter[int]] = defaultdict(Counter)


class Api:
    def __init__(self, app: FastAPI, schema: Any, auth: dict[str, str], skus: list[str]) -> None:
        self.app, self.schema, self.auth, self.skus = app, schema, auth, skus


def daily_units(index: int, days: int) -> list[int]:
    return [(index + d) % 4 + (2 if d % 7 in (5, 6) else 0) for d in range(days)]


def train_small_model(root: Path) -> ModelRegistry:
    rows = [
        {"unique_id": f"T{i}", "ds": pd.Timestamp("2026-01-01") + pd.Timedelta(days=d), "y": float(u)}
        for i in range(8)
        for d, u in enumerate(daily_units(i, 42))
    ]
    registry = ModelRegistry(root)
    train_and_publish(pd.DataFrame(rows), registry, 7, "D", 7, "fuzz", archs=("lstm",), epochs=1)
    return registry


def seed_history(settings: Settings, skus: list[str], now_ms: int) -> None:
    """Daily windows ending yesterday: HISTORY_DAYS for all but the last SKU, which gets 3 (the fallback)."""
    store = FeatureStore(connect_redis(settings.redis_url))
    today = now_ms - now_ms % DAY_MS
    for index, sku in enumerate(skus):
        days = 3 if index == len(skus) - 1 else HISTORY_DAYS
        first = today - days * DAY_MS
        store.write(
            FeatureWindow(
                sku=sku,
                granularity="1d",
                window_start=first + d * DAY_MS,
                window_end=first + (d + 1) * DAY_MS,
                purchases=u,
                units=u,
            )
            for d, u in enumerate(daily_units(index, days))
            if u
        )


def seed_inventory(settings: Settings, skus: list[str], corrupt_sku: str, now_ms: int) -> None:
    """Inventory states, and a corrupt one (the API must say so, not crash; not fuzzed: a 503 by design)."""
    redis = connect_redis(settings.redis_url)
    redis.set(inventory_key(corrupt_sku), b'{"sku": "not a state", "on_hand": "NaN"')
    for index, sku in enumerate(skus):
        pipeline = [
            Outstanding(decision_id=f"{sku}:{now_ms}", qty=12, ordered_period_ms=now_ms, eta_ms=now_ms, eta_step=1)
        ]
        state = InventoryState(sku=sku, on_hand=float(index), price=9.5, pipeline=pipeline[: index % 2])
        redis.set(inventory_key(sku), state.model_dump_json())


@pytest.fixture(scope="module")
def scoped(settings: Settings) -> Settings:
    run = uuid.uuid4().hex[:8]
    names = ("events", "events_dlq", "features", "forecasts", "reorders", "prices", "receipts")
    topics = TopicNames(**{name: f"it.fuzz.{name}.{run}" for name in names})
    configured = settings.model_copy(update={"topics": topics, "api_keys": [SecretStr(WRITE_KEY)]})
    ensure_topics(configured)
    return configured


@pytest.fixture(scope="module")
def apis(
    scoped: Settings, read_auth: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Api]]:
    now_ms = int(time.time() * 1000)
    run = uuid.uuid4().hex[:6]
    forecast_skus = [f"FZ-F{i}-{run}" for i in range(6)]
    agent_skus = [f"FZ-A{i}-{run}" for i in range(6)]
    seed_history(scoped, forecast_skus, now_ms)
    seed_inventory(scoped, agent_skus, f"FZ-CORRUPT-{run}", now_ms)
    registry = train_small_model(tmp_path_factory.mktemp("fuzz-registry"))
    forecaster_config = ForecasterSettings(registry=registry.root, group_id=f"it-fuzz-{run}", jit=False)
    write_auth = {"Authorization": f"Bearer {WRITE_KEY}"}
    apps = {
        "ingest": (create_ingest_app(scoped, IngestSettings(max_body_bytes=16 * 1024, max_events=50)), write_auth, []),
        "forecaster": (create_forecaster_app(scoped, forecaster_config, stream=False), read_auth, forecast_skus),
        "agent": (
            create_agent_app(scoped, AgentSettings(group_id=f"it-fuzz-{run}"), stream=False),
            read_auth,
            agent_skus,
        ),
    }
    try:
        yield {
            name: Api(app, schemathesis.openapi.from_asgi("/openapi.json", app), auth, skus)
            for name, (app, auth, skus) in apps.items()
        }
    finally:
        shutdown_lifespans()  # schemathesis keeps each app's lifespan running until asked
        write_totals()


def write_totals() -> None:
    if not TOTALS:  # no fuzzing ran (a subset of the tests): keep the last report
        return
    report = {
        operation: {"requests": sum(statuses.values()), "statuses": {str(k): v for k, v in sorted(statuses.items())}}
        for operation, statuses in sorted(TOTALS.items())
    }
    out = ROOT / "reports" / "fuzz" / "api.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nAPI fuzzing totals ({out.relative_to(ROOT)}):\n{json.dumps(report, indent=2)}")


def cases(api: Api, method: str, path: str) -> st.SearchStrategy:
    """Positive and negative cases of one operation; half of them made plausible: SKUs the stores hold, event times
    of the last day (anything else is refused before it gets far)."""
    operation = api.schema[path][method]
    generated = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )
    skus = st.lists(st.sampled_from(api.skus), min_size=1, max_size=5) if api.skus else st.just([])
    return st.tuples(generated, st.booleans(), skus, st.integers(0, DAY_MS)).map(lambda drawn: plausible(*drawn))


def plausible(case: Any, seeded: bool, skus: list[str], age_ms: int) -> Any:
    if not seeded:
        return case
    if skus and case.path_parameters and "sku" in case.path_parameters:
        case.path_parameters = {**case.path_parameters, "sku": skus[0]}
    elif skus and isinstance(case.body, dict) and "skus" in case.body:
        case.body = {**case.body, "skus": skus}
    events = case.body if isinstance(case.body, list) else [case.body]
    for event in events:
        if isinstance(event, dict) and "ts" in event:
            event["ts"] = int(time.time() * 1000) - age_ms
    return case


def run_cases(api: Api, method: str, path: str, examples: int, check: Callable[[Any], None]) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # the same cases on every run: a failure here is reproducible, not luck
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=cases(api, method, path))
    def run(case: Any) -> None:
        check(case)

    run()


@pytest.mark.parametrize(("service", "method", "path"), OPERATIONS, ids=[" ".join(o) for o in OPERATIONS])
def test_responses_are_never_5xx_and_conform_to_the_spec(
    apis: dict[str, Api], service: str, method: str, path: str
) -> None:
    api = apis[service]

    def check(case: Any) -> None:
        response = case.call(headers=api.auth)
        TOTALS[f"{service} {method} {path}"][response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    examples = CASES_PER_OPERATION if path.startswith("/v1/") else CASES_PER_PROBE
    run_cases(api, method, path, examples, check)
    statuses = TOTALS[f"{service} {method} {path}"]
    assert not any(status >= 500 for status in statuses), statuses
    if path.startswith("/v1/"):
        assert statuses[200] > 0, f"no case reached the 200 path: {dict(statuses)}"


@pytest.mark.parametrize(("service", "method", "path"), READ_PROTECTED, ids=[" ".join(o) for o in READ_PROTECTED])
@pytest.mark.parametrize("credentials", ["none", "wrong key", "write key"])
def test_read_apis_answer_every_case_without_a_read_key_with_the_same_401(
    apis: dict[str, Api], service: str, method: str, path: str, credentials: str
) -> None:
    api = apis[service]
    headers = {
        "none": {},
        "wrong key": {"Authorization": "Bearer not-a-key"},
        "write key": {"Authorization": f"Bearer {WRITE_KEY}"},
    }[credentials]
    bodies: set[bytes] = set()

    def check(case: Any) -> None:
        response = case.call(headers=headers)
        TOTALS[f"{service} {method} {path} ({credentials})"][response.status_code] += 1
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"][0].startswith("Bearer realm=")  # schemathesis: lower-case, lists
        bodies.add(response.content)

    run_cases(api, method, path, CASES_WITHOUT_A_READ_KEY, check)
    # seeded SKUs, unknown SKUs and malformed input all look alike: nothing about the data leaks
    assert len(bodies) == 1, bodies
    assert json.loads(bodies.pop()) == {
        "error": {"code": "unauthorized", "message": "missing or invalid API key (Authorization: Bearer <key>)"}
    }


def test_right_read_key_reads_a_seeded_sku_and_health_stays_open(
    apis: dict[str, Api], read_auth: dict[str, str]
) -> None:
    for service, path in (("forecaster", "/v1/forecast/"), ("agent", "/v1/inventory/")):
        api = apis[service]
        with get_client(api.app) as client:
            for open_path in ("/healthz", "/readyz", "/metrics/", "/openapi.json"):
                assert client.get(open_path).status_code == 200, (service, open_path)
            sku = api.skus[0]
            assert client.get(f"{path}{sku}", headers=read_auth).json()["sku"] == sku
            refused = client.get(f"{path}{sku}")
            assert refused.status_code == 401 and sku not in refused.text
            if service == "agent":
                corrupt_sku = api.skus[0].replace("FZ-A0-", "FZ-CORRUPT-")
                corrupt = client.get(f"{path}{corrupt_sku}", headers=read_auth)
                assert corrupt.status_code == 503 and corrupt.json()["error"]["code"] == "corrupt_state", corrupt.text


def test_every_operation_is_fuzzed(apis: dict[str, Api]) -> None:
    in_specs = {
        (service, method.upper(), path)
        for service, api in apis.items()
        for path, methods in api.app.openapi()["paths"].items()
        for method in methods
    }
    assert in_specs == set(OPERATIONS)


@pytest.mark.parametrize(
    "body",
    [[], {"event_id": "e-0", "type": "view", "sku": "S-1", "ts": 0, "qty": 1, "price": 1.0, "currency": "EUR"}],
    ids=["empty batch", "ts 0"],
)
def test_the_ingest_inputs_the_issue_named_answer_codes_the_spec_lists(apis: dict[str, Api], body: Any) -> None:
    api = apis["ingest"]
    case = api.schema["/v1/events"]["POST"].Case(body=body, media_type="application/json")
    response = case.call(headers=api.auth)
    assert response.status_code in {400, 422}, response.text
    case.validate_response(response, checks=CHECKS)
