"""``python -m gateway_agent``: decode characteristic values, or run the gateway.

python -m gateway_agent decode 2A35 1e8a00580078000000041114293b3c00012700
python -m gateway_agent run --simulate --patients 20
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading


def _run(args: argparse.Namespace) -> int:
    from gateway_agent.settings import GatewaySettings, SettingsError

    try:
        settings = GatewaySettings.from_env()
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    if not args.simulate:
        print(
            "gateway: the Bluetooth transport comes with the gateway issue; "
            "use --simulate to run with simulated devices",
            file=sys.stderr,
        )
        return 2
    from gateway_agent.simulated_homes import run_simulated

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run_simulated(
        settings,
        patients=args.patients,
        seed=args.seed,
        history_days=args.history_days,
        rate_per_patient_per_minute=args.rate,
        stop=stop,
        live_readings=args.live_readings,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["decode"]:
        from gateway_agent.decode_cli import run

        return run(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m gateway_agent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("decode", help="decode one characteristic value and print it as JSON")
    p_run = sub.add_parser("run", help="run the gateway")
    p_run.add_argument("--simulate", action="store_true", help="simulated devices, no radio")
    p_run.add_argument("--patients", type=int, default=20)
    p_run.add_argument("--seed", type=int, default=7)
    p_run.add_argument(
        "--history-days",
        type=float,
        default=7.0,
        help="stored readings to replay on first start (days)",
    )
    p_run.add_argument(
        "--rate", type=float, default=1.0, help="live readings per patient per minute"
    )
    p_run.add_argument(
        "--live-readings",
        type=int,
        default=None,
        help="take this many live measurements, then idle (tests)",
    )
    p_run.set_defaults(func=_run)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
