"""``python -m bench``: run every benchmark and write bench/results/*.json."""

from bench import gateway

if __name__ == "__main__":
    gateway.main()
