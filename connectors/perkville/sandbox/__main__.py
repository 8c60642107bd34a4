"""``python -m connectors.perkville.sandbox``: serve the sandbox in this process (used by bench/ and tests)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from connectors.perkville.sandbox import REDEEM_SIGNS, Sandbox


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.perkville.sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--businesses", type=int, default=1)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument(
        "--redeem-sign",
        choices=REDEEM_SIGNS,
        default=REDEEM_SIGNS[0],
        help="redemptions -N and their VOID_REF +N (negative, as documented) or +N and -N (positive)",
    )
    parser.add_argument("--timezone", default="UTC")
    parser.add_argument("--clock-offset", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--latency-ms", type=float, default=0.0, metavar="L")
    parser.add_argument("--rate-limit", type=int, default=0, metavar="R", help="0: no request budget")
    parser.add_argument(
        "--tiered-levels", action="store_true", help="connection levels by lifetime points (Bronze, Silver, Gold)"
    )
    args = parser.parse_args(argv)
    sandbox = Sandbox(
        seed=args.seed,
        businesses=args.businesses,
        members=args.members,
        transactions=args.transactions,
        timezone=args.timezone,
        redeem_sign=args.redeem_sign,
        clock_offset=args.clock_offset,
        tiered_levels=args.tiered_levels,
    )
    sandbox.set_network(latency_ms=args.latency_ms, rate_limit=args.rate_limit or None)
    sandbox.start(args.host, args.port)
    # One JSON line on stdout: the URLs and the (test-only) credentials, for the parent process.
    sys.stdout.write(json.dumps(sandbox.describe()) + "\n")
    sys.stdout.flush()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
