"""Shelfcast core: contracts, settings, Kafka and Redis helpers, metrics. Nothing service-specific."""

__version__ = "0.1.0"
