"""``python -m bench``: run every benchmark and write bench/results/*.json."""

from bench import gateway, ingest

if __name__ == "__main__":
    gateway.main()
    ingest.main([])
