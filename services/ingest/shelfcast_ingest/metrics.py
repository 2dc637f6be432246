"""Prometheus metrics of the ingest service (`shelfcast_ingest_*`)."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS_RECEIVED = Counter("shelfcast_ingest_events_received", "Events in requests, valid or not", ["type"])
EVENTS_ACCEPTED = Counter("shelfcast_ingest_events_accepted", "Events acknowledged by the broker", ["type"])
EVENTS_REJECTED = Counter(
    "shelfcast_ingest_events_rejected", "Events that failed validation, by the first failing field", ["reason"]
)
DELIVERY_ERRORS = Counter("shelfcast_ingest_delivery_errors", "Batches the broker did not fully acknowledge")
QUEUE_DEPTH = Gauge("shelfcast_ingest_producer_queue_depth_events", "Events waiting in the producer queue")
REQUEST_SECONDS = Histogram(
    "shelfcast_ingest_request_duration_seconds",
    "HTTP request latency",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
