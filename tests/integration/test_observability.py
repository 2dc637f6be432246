"""deploy/prometheus/ and deploy/grafana/ against a real Prometheus scraping the running pipeline.

The embedded broker and Redis, then ingest, the PyFlink features job, the forecaster (a small model trained first)
and the inventory agent as `shelfcast` processes on free ports; the storefront simulator sends a few days of
events through ingest, plus what healthy traffic lacks: a rejected event, poison records and a stale forecast.
A `prometheus` (Debian's package, installed by `make test`) scrapes them every second with the scrape config
rewritten to those ports and the alert rules loaded. Then every panel query of every dashboard must be accepted
and return data, and every alert expression must be accepted and evaluate without error. A panel without data
names the metrics that no target exports.

A second test runs the agent with no forecaster while purchases keep coming, and proves that the two alerts on
that (no decisions while purchases arrive; forecasts stale) fire, from a copy of the rules with shorter `for:` and
ranges, while the agent goes on deciding on its own forecast from the feature store's daily windows.
"""

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import yaml

from shelfcast.contracts import Event, FeatureWindow, Forecast, Reorder
from shelfcast.infra import ManagedProcess, free_port, start_service
from shelfcast.kafka import ensure_topics, make_producer, produce
from shelfcast.settings import Settings, TopicNames
from shelfcast.store import FeatureStore, connect_redis
from shelfcast_agent.state import InventoryState, LastDecision, inventory_key
from tests.integration.test_agent_online import read_all

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
JOBS = {"ingest", "forecaster", "inventory-agent", "features"}
SKUS, DAYS, HISTORY_DAYS = 5, 4, 60
START = datetime.date(2026, 1, 1)
POISON = [b"{not json", b'{"event_id": "x", "type": "teleport"}']
SETTLE_S = 120  # after the simulator: until every panel has data (forecasts need daily windows to close)


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"`{name}` not found: `make test` installs Debian's prometheus package (apt-get install prometheus)"
        )
    return found


def rule_files() -> list[Path]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    return [PROMETHEUS_CONFIG.parent / name for name in config["rule_files"]]


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for path in rule_files() for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]
    ]


@dataclass
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel!r} [{self.ref_id}]"


def panel_queries() -> list[PanelQuery]:
    queries = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        panels = [p for top in board["panels"] for p in [top, *top.get("panels", [])]]
        for panel in panels:
            for target in panel.get("targets", []):
                queries.append(PanelQuery(board["title"], panel["title"], target["refId"], target["expr"]))
    return queries


def metric_names(expr: str) -> set[str]:
    """The Shelfcast metric names an expression reads (regex selectors on __name__ name none)."""
    return {name for name in re.findall(r"\bshelfcast_[a-z0-9_]*[a-z0-9]\b", expr)}


def test_promtool_accepts_the_scrape_config_and_every_rule_file() -> None:
    promtool = binary("promtool")
    config = subprocess.run([promtool, "check", "config", PROMETHEUS_CONFIG], capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr
    assert rule_files(), "prometheus.yml loads no rule file"
    for path in rule_files():
        rules = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
        assert rules.returncode == 0, rules.stdout + rules.stderr
    assert {job["job_name"] for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]} == JOBS
    for rule in alert_rules():
        assert rule.get("for"), f"{rule['alert']} has no `for:`"
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


def test_dashboards_are_grafana_json_on_the_provisioned_datasource() -> None:
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "shelfcast.yml").read_text())
    assert provider["providers"][0]["type"] == "file"
    assert len(DASHBOARDS) == 4
    uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["schemaVersion"] >= 36 and board["title"] and board["uid"] not in uids, path.name
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert {"h", "w", "x", "y"} <= set(grid) and grid["x"] + grid["w"] <= 24, (path.name, panel["title"])
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == uid, (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])
            for target in panel["targets"]:
                assert target["refId"] and target["expr"] and target["datasource"]["uid"] == uid


class Prometheus:
    """A `prometheus` process scraping `ports` (job name -> loopback port) every second, with the alert rules."""

    def __init__(self, ports: dict[str, int], work: Path, rules: list[Path] | None = None) -> None:
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
        config["rule_files"] = [str(path.resolve()) for path in (rules or rule_files())]
        for job in config["scrape_configs"]:
            for static in job["static_configs"]:
                static["targets"] = [f"127.0.0.1:{ports[job['job_name']]}"]
        work.mkdir(parents=True, exist_ok=True)
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = work / "prometheus.log"
        argv = [binary("prometheus"), f"--config.file={work / 'prometheus.yml'}"]
        argv += [f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address={self.url.removeprefix('http://')}"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.url, timeout=10)
        deadline = time.monotonic() + 30
        while not self._ready():
            assert self.proc.poll() is None and time.monotonic() < deadline, f"prometheus did not start: {self.tail()}"
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            return self.http.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def query(self, expr: str) -> dict[str, Any]:
        body = self.http.get("/api/v1/query", params={"query": expr}).json()
        assert isinstance(body, dict)
        return body

    def targets(self) -> dict[str, str]:
        """Job -> health (up, down, unknown) and the last scrape error, if any."""
        active = self.http.get("/api/v1/targets").json()["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] + (f" ({t['lastError']})" if t["lastError"] else "") for t in active}

    def wait_for_targets(self, timeout: float) -> None:
        """Until every job's target is up, or `timeout` (the test then names the ones that are not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            targets = self.targets()
            if set(targets) == JOBS and all(health == "up" for health in targets.values()):
                return
            time.sleep(0.5)

    def firing(self) -> set[str]:
        """Names of the alerts in state `firing` now."""
        alerts = self.http.get("/api/v1/alerts").json()["data"]["alerts"]
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}

    def exported(self) -> set[str]:
        return set(self.http.get("/api/v1/label/__name__/values").json()["data"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.http.close()


def shelfcast(args: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("ab") as out:
        subprocess.run(
            [sys.executable, "-m", "shelfcast", *args], check=True, env={**os.environ, **env}, stdout=out, stderr=out
        )


def train_model(work: Path, env: dict[str, str]) -> None:
    """A small forecaster model on simulated daily sales of the same catalogue before the live days."""
    history = work / "history.csv"
    start = START - datetime.timedelta(days=HISTORY_DAYS)
    sim = ["--skus", str(SKUS), "--days", str(HISTORY_DAYS), "--start", str(start), "--target", "none"]
    shelfcast(["simulate", "storefront", *sim, "--history", str(history)], env, work / "train.log")
    train = ["--data", str(history), "--horizon", "7", "--freq", "D", "--season-length", "7", "--epochs", "2"]
    train += ["--arch", "lstm", "--exogenous=views", "--out", env["SHELFCAST_FORECASTER_REGISTRY"]]
    shelfcast(["forecaster", "train", *train], env, work / "train.log")


@dataclass
class Pipeline:
    settings: Settings
    env: dict[str, str]
    urls: dict[str, str]
    ports: dict[str, int]
    api_key: str
    procs: dict[str, ManagedProcess]


@pytest.fixture()
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    run = uuid.uuid4().hex[:8]
    topics = TopicNames(**{field: f"it.obs.{field}.{run}" for field in TopicNames.model_fields})
    configured = settings.model_copy(update={"topics": topics})
    ensure_topics(configured)
    api_key = uuid.uuid4().hex
    ports = {job: free_port() for job in JOBS}
    sku_params = tmp_path / "skus.json"
    pricing = {"base_price": 10.0, "elasticity": 1.5, "max_step": 0.1, "min_price": 7.0, "max_price": 12.0}
    sku_params.write_text(json.dumps({"defaults": {"lead_time": 2, "unit_cost": 2.5, "pricing": pricing}}))
    env = {
        "SHELFCAST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SHELFCAST_REDIS_URL": settings.redis_url,
        "SHELFCAST_KAFKA_SESSION_TIMEOUT_MS": str(settings.kafka_session_timeout_ms),
        "SHELFCAST_STATE_DIR": str(tmp_path / "state"),
        "SHELFCAST_API_KEYS": json.dumps([api_key]),
        "SHELFCAST_READ_API_KEYS": json.dumps(sorted(settings.load_read_api_keys())),
        **{f"SHELFCAST_TOPICS__{k.upper()}": v for k, v in topics.model_dump().items()},
        "SHELFCAST_FEATURES_GROUP_ID": f"it-obs-features-{run}",
        "SHELFCAST_FEATURES_METRICS_PORT": str(ports["features"]),
        "SHELFCAST_FORECASTER_GROUP_ID": f"it-obs-forecaster-{run}",
        "SHELFCAST_FORECASTER_REGISTRY": str(tmp_path / "models"),
        "SHELFCAST_AGENT_GROUP_ID": f"it-obs-agent-{run}",
        "SHELFCAST_AGENT_KEYSPACE": f"it:obs:{run}",
        "SHELFCAST_AGENT_SKU_PARAMS": str(sku_params),
        "SHELFCAST_AGENT_SWEEP_INTERVAL_S": "0.2",
    }
    urls = {job: f"http://127.0.0.1:{port}" for job, port in ports.items()}
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: dict[str, ManagedProcess] = {}
    try:
        with ThreadPoolExecutor(1) as pool:
            trained = pool.submit(train_model, tmp_path, env)  # meanwhile the JVM of the features job starts
            procs["features"] = start_service("features", ["features", "run", "--fresh"], env, None, logs / "f.log")
            args = ["ingest", "serve", "--port", str(ports["ingest"])]
            procs["ingest"] = start_service("ingest", args, env, f"{urls['ingest']}/readyz", logs / "ingest.log")
            trained.result()
        args = ["forecaster", "serve", "--port", str(ports["forecaster"])]
        procs["forecaster"] = start_service("forecaster", args, env, f"{urls['forecaster']}/readyz", logs / "fc.log")
        args = ["agent", "run", "--port", str(ports["inventory-agent"])]
        ready = f"{urls['inventory-agent']}/readyz"
        procs["inventory-agent"] = start_service("inventory-agent", args, env, ready, logs / "agent.log")
        yield Pipeline(configured, env, urls, ports, api_key, procs)
    finally:
        for proc in reversed(procs.values()):
            proc.stop()


def feed(pipeline: Pipeline, log: Path) -> None:
    """The simulated days through ingest, and what healthy traffic lacks: a rejected event, poison records on the
    events topic (dead-lettered) and a stale forecast (a fallback); then a call to each service's API."""
    live = ["--skus", str(SKUS), "--days", str(DAYS), "--start", str(START), "--target", "http"]
    live += ["--url", pipeline.urls["ingest"], "--api-key", pipeline.api_key]
    shelfcast(["simulate", "storefront", *live], pipeline.env, log)
    headers = {"authorization": f"Bearer {pipeline.api_key}"}
    bad = [{"event_id": "obs-bad", "type": "purchase", "sku": "SKU-00000", "ts": 1, "qty": -3}]
    assert httpx.post(f"{pipeline.urls['ingest']}/v1/events", json=bad, headers=headers).status_code == 422
    producer = make_producer(pipeline.settings)
    for raw in POISON:
        producer.produce(pipeline.settings.topics.events, value=raw)
    last_day = int(datetime.datetime.combine(START, datetime.time(), datetime.UTC).timestamp() * 1000)
    last_day += (DAYS - 1) * 86_400_000
    three_days_ago = int(time.time() * 1000) - 3 * 86_400_000
    stale = Forecast(
        sku="SKU-09999",
        issued_at=three_days_ago,
        model="lstm",
        model_version="obs",
        horizon=7,
        freq="D",
        start=last_day,
        quantiles={"p10": [1.0] * 7, "p50": [2.0] * 7, "p90": [3.0] * 7},
    )
    produce(producer, pipeline.settings.topics.forecasts, stale)
    assert producer.flush(10) == 0
    for url in (
        f"{pipeline.urls['forecaster']}/v1/forecast/SKU-00000",
        f"{pipeline.urls['inventory-agent']}/v1/inventory/SKU-00000",
    ):
        # any status: the latency histograms count API routes, not only /metrics
        httpx.get(url, headers={"Authorization": f"Bearer {next(iter(pipeline.settings.load_read_api_keys()))}"})


def without_data(prom: Prometheus, queries: list[PanelQuery]) -> tuple[list[str], list[PanelQuery], list[str]]:
    """Queries Prometheus refused (with its error), the accepted ones that returned no series, and what the others
    returned."""
    refused, empty, answered = [], [], []
    for query in queries:
        body = prom.query(query.expr)
        if body.get("status") != "success":
            refused.append(f"{query}: {body.get('errorType')}: {body.get('error')}\n    {query.expr}")
        elif not body["data"]["result"]:
            empty.append(query)
        else:
            values = ", ".join(f"{s['value'][1]}" for s in body["data"]["result"][:4])
            answered.append(f"{query}: {len(body['data']['result'])} series: {values}")
    return refused, empty, answered


def test_prometheus_scrapes_every_service_and_every_panel_and_alert_query_works(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    prom = Prometheus(pipeline.ports, tmp_path / "prometheus")
    try:
        prom.wait_for_targets(60)
        feed(pipeline, tmp_path / "logs" / "simulate.log")
        queries = panel_queries()
        refused, empty, answered = without_data(prom, queries)
        deadline = time.monotonic() + SETTLE_S
        while empty and not refused and time.monotonic() < deadline:
            time.sleep(2)
            refused, empty, answered = without_data(prom, queries)
        print("\n".join(answered))  # what each panel shows, with pytest -s

        targets = prom.targets()
        exported = prom.exported()
        problems = [f"refused: {r}" for r in refused]
        for query in empty:
            missing = sorted(n for n in metric_names(query.expr) if n not in exported)
            why = f"metric(s) not exported by any target: {', '.join(missing)}" if missing else "no series match"
            problems.append(f"no data: {query}: {why}\n    {query.expr}")
        down = {job: targets.get(job, "not a target") for job in JOBS if targets.get(job) != "up"}
        if down:
            problems.append(f"targets not up: {down}")

        rules = alert_rules()
        for rule in rules:
            body = prom.query(rule["expr"])
            if body.get("status") != "success":
                problems.append(f"alert {rule['alert']} refused: {body.get('error')}")
        loaded = prom.http.get("/api/v1/rules").json()["data"]["groups"]
        evaluated = {r["name"]: r for group in loaded for r in group["rules"]}
        assert set(evaluated) == {r["alert"] for r in rules}, "the server loaded other rules than alerts.yml holds"
        problems += [
            f"alert {n} evaluates with {r['health']}: {r.get('lastError')}"
            for n, r in evaluated.items()
            if r["health"] != "ok"
        ]

        logs = {name: proc.log for name, proc in pipeline.procs.items()}
        assert not problems, "\n".join(problems) + f"\n(targets: {targets}; logs: {logs})"
        assert len(queries) > 40 and len(rules) >= 5
    finally:
        prom.stop()


# ------------------------------------------------------------------------------------- the forecaster stopped
FORECAST_ALERTS = ("ShelfcastAgentNoDecisionsWhilePurchasesArrive", "ShelfcastAgentForecastsStale")
GRACE_S, MAX_AGE_S = 15, 20  # the agent's missing-forecast grace and forecast_max_age_s in this test
DAY_MS = 86_400_000


def quick_rules(work: Path, window: str) -> Path:
    """alerts.yml with every `for:` at 1s and the agent alerts' 25h range at `window`; the expressions are ours."""
    groups = yaml.safe_load((PROMETHEUS_CONFIG.parent / "alerts.yml").read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule["for"] = "1s"
            rule["expr"] = rule["expr"].replace("[25h]", f"[{window}]")
    path = work / "alerts-quick.yml"
    path.write_text(yaml.safe_dump(groups))
    return path


def reorders_on(settings: Settings, topic: str) -> list[Reorder]:
    return [Reorder.from_bytes(v) for v in read_all(settings, topic)]


class Purchases:
    """Purchases of `skus` on the events topic every 0.3 s, dated in the simulated day `day_ms`, until stopped."""

    def __init__(self, settings: Settings, skus: list[str], day_ms: int) -> None:
        self.settings, self.skus, self.day_ms = settings, skus, day_ms
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        producer = make_producer(self.settings)
        while not self.stop.is_set():
            for sku in self.skus:
                ts = self.day_ms + 3_600_000 + self.sent * 1_000  # within the day, moving on
                event = Event(
                    event_id=uuid.uuid4().hex, type="purchase", sku=sku, ts=ts, qty=1, price=10.0, currency="EUR"
                )
                produce(producer, self.settings.topics.events, event)
                self.sent += 1
            producer.flush(5)
            self.stop.wait(0.3)
        producer.flush(5)


def test_with_the_forecaster_stopped_the_agent_decides_on_daily_windows_and_both_alerts_fire(
    settings: Settings, tmp_path: Path
) -> None:
    """No forecaster at all, purchases keep coming: while the missing-forecast grace runs, no decision is made and
    "no decisions while purchases arrive" fires; "forecasts stale" fires once the agent waited forecast_max_age_s;
    meanwhile the agent decides every SKU every period on its own forecast from the feature store's daily windows."""
    run = uuid.uuid4().hex[:8]
    topics = TopicNames(**{field: f"it.obs.stop.{field}.{run}" for field in TopicNames.model_fields})
    configured = settings.model_copy(update={"topics": topics})
    ensure_topics(configured)
    skus = [f"STOP-{run}-{i}" for i in range(3)]
    day = int(datetime.datetime.combine(START, datetime.time(), datetime.UTC).timestamp() * 1000) + 20 * DAY_MS
    windows = [
        FeatureWindow(
            sku=sku, granularity="1d", window_start=day - d * DAY_MS, window_end=day - (d - 1) * DAY_MS, units=4 + i
        )
        for i, sku in enumerate(skus)
        for d in range(1, 15)
    ]
    FeatureStore(connect_redis(settings.redis_url)).write(windows)  # what the features job wrote before
    port = free_port()
    env = {
        "SHELFCAST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SHELFCAST_REDIS_URL": settings.redis_url,
        "SHELFCAST_KAFKA_SESSION_TIMEOUT_MS": str(settings.kafka_session_timeout_ms),
        "SHELFCAST_STATE_DIR": str(tmp_path / "state"),
        "SHELFCAST_READ_API_KEYS": json.dumps(sorted(settings.load_read_api_keys())),
        **{f"SHELFCAST_TOPICS__{k.upper()}": v for k, v in topics.model_dump().items()},
        "SHELFCAST_AGENT_GROUP_ID": f"it-obs-stop-{run}",
        "SHELFCAST_AGENT_KEYSPACE": f"it:obs:stop:{run}",
        "SHELFCAST_AGENT_SWEEP_INTERVAL_S": "0.2",
        "SHELFCAST_AGENT_MISSING_FORECAST_GRACE_S": str(GRACE_S),
        "SHELFCAST_AGENT_FORECAST_MAX_AGE_S": str(MAX_AGE_S),
    }
    url = f"http://127.0.0.1:{port}"
    agent = start_service(
        "inventory-agent", ["agent", "run", "--port", str(port)], env, f"{url}/readyz", tmp_path / "a.log"
    )
    ports = {job: free_port() for job in JOBS} | {"inventory-agent": port}  # only the agent runs
    prom = Prometheus(ports, tmp_path / "prometheus", [quick_rules(tmp_path, "20s")])
    fired: set[str] = set()

    def until(check: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fired.update(prom.firing())
            value = check()
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; alerts fired: {sorted(fired)}; log: {agent.log}")

    purchases = Purchases(configured, skus, day)
    try:
        redis_client = connect_redis(settings.redis_url)

        def decided(period: int) -> list[LastDecision] | None:
            raw = cast(list[bytes | None], redis_client.mget([inventory_key(s) for s in skus]))
            states = [InventoryState.model_validate_json(r) for r in raw if r is not None]
            last = [s.last_decision for s in states if s.last_decision is not None]
            return last if len(last) == len(skus) and all(d.period_ms == period for d in last) else None

        first = until(lambda: decided(day), GRACE_S + 30, "every SKU decided for the first day")
        assert "ShelfcastAgentNoDecisionsWhilePurchasesArrive" in fired  # during the grace, before the decisions
        purchases.day_ms = day + DAY_MS  # the next simulated day: purchases move the agent's clock on
        second = until(lambda: decided(day + DAY_MS), GRACE_S + 30, "every SKU decided for the second day")
        until(lambda: set(FORECAST_ALERTS) <= fired, 30, "both alerts firing")
        loaded = prom.http.get("/api/v1/rules").json()["data"]["groups"]
        health = {r["name"]: r["health"] for group in loaded for r in group["rules"]}
        assert all(health[name] == "ok" for name in FORECAST_ALERTS), health
        forecast_age = [q for q in panel_queries() if "newest_forecast" in q.expr or "forecast_max_age" in q.expr]
        assert forecast_age and all(prom.query(q.expr)["data"]["result"] for q in forecast_age), forecast_age

        for last in first + second:
            assert last.fallback == "missing_forecast", last
            assert "from feature store daily windows" in last.reason and "[fallback: missing forecast]" in last.reason
        reorders = reorders_on(configured, topics.reorders)
        assert {r.decision_id for r in reorders} >= {f"{s}:{day}" for s in skus}  # each SKU ordered on day one
        assert all("from feature store daily windows" in r.reason for r in reorders)
        assert len({r.decision_id for r in reorders}) == len(reorders)
        ready = httpx.get(f"{url}/readyz").json()
        assert ready["status"] == "ready" and ready["deciding_on_fallbacks"] is True
        assert ready["last_decision_fallback"] == "missing_forecast" and ready["newest_forecast_age_s"] > MAX_AGE_S
    finally:
        purchases.stop.set()
        purchases.thread.join(10)
        prom.stop()
        agent.stop()
