"""CareWatch ingest: consumes readings from MQTT, stores them, serves the HTTP API."""
