"""The HTTP API: health, metrics, and the clinician read and write endpoints."""
