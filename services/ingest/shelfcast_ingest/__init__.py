"""Ingest: storefront events over HTTP into `shelfcast.events`, and the storefront simulator."""
