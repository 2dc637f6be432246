"""The streaming features job: storefront events -> per-SKU event-time windows in Redis and on Kafka."""
