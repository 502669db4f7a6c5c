"""``python -m bench``: run every benchmark and write bench/results/*.json."""

from bench import analytics, gateway, ingest, workspace

if __name__ == "__main__":
    gateway.main()
    ingest.main([])
    analytics.main([])
    workspace.main([])
