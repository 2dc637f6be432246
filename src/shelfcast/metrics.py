"""Prometheus metrics of the core helpers.

Names follow `shelfcast_<service>_<what>_<unit>`; the core's own use the service name `core`.
"""

from prometheus_client import Counter

DEAD_LETTERS = Counter(
    "shelfcast_core_dead_letters",
    "Records sent to a dead-letter topic",
    ["source_topic", "stage"],
)
KAFKA_DELIVERY_ERRORS = Counter(
    "shelfcast_core_kafka_delivery_errors",
    "Records the broker did not acknowledge",
    ["topic"],
)
