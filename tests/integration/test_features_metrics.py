"""The features writer's metrics, scraped from the PyFlink Python worker while the job runs."""

import socket
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shelfcast.contracts import FeatureWindow
from shelfcast.infra import free_port
from tests.integration.test_features_job import MINUTE, OUT_OF_ORDERNESS, T0, FeaturesJob, Stream, probe

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[tuple[str, str], float]:
    """(sample name, granularity) -> value of the shelfcast_features_* samples."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, s.labels.get("granularity", "")): s.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("shelfcast_features_")
        for s in family.samples
    }


def test_the_worker_serves_window_metrics(job: FeaturesJob) -> None:
    port = free_port()
    job.env["SHELFCAST_FEATURES_METRICS_PORT"] = str(port)
    stream = Stream(prefix=f"m{uuid.uuid4().hex[:6]}")
    job.start()
    job.send([stream.event(str(n), "purchase", "S0", T0 + n * 10_000) for n in range(5)])
    job.send(probe(stream, "P", T0 + 2 * MINUTE + OUT_OF_ORDERNESS + 1))  # closes the first minute
    job.wait_for_window(f"{stream.prefix}-S0", "1m")

    samples = scrape(port)
    assert samples[("shelfcast_features_windows_written_total", "1m")] >= 1
    assert samples[("shelfcast_features_last_window_end_timestamp_seconds", "1m")] == (T0 + MINUTE) / 1000
    assert samples[("shelfcast_features_window_close_delay_seconds_count", "1m")] >= 1
    assert job.proc is not None and job.proc.alive()


def test_a_taken_port_moves_to_the_next_one() -> None:
    from shelfcast_features import monitoring

    port = free_port()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", port))
        taken.listen()
        served = monitoring.serve_metrics(port)
        assert served is not None and port < served < port + monitoring.PORTS_TRIED
        assert monitoring.serve_metrics(port) == served  # once per process
    window = FeatureWindow(sku="SKU-1", granularity="1h", window_start=T0, window_end=T0 + 60 * MINUTE, units=2)
    monitoring.count_written(window, written_at_s=(T0 + 60 * MINUTE) / 1000 + 3)
    assert scrape(served)[("shelfcast_features_windows_written_total", "1h")] >= 1
