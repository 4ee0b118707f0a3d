"""The fake DataFlows API (tests/fakes/dataflows.py) in a process of its own.

Its own process, so its HTTP threads do not take the GIL from mail2sms or the load
generator. Prints ``URL <base url>``; each line ``report`` on stdin is answered with one
JSON line (POST requests, SMS sent, distinct (number, text) pairs); ``report PREFIX``
also counts the requests carrying a number that starts with PREFIX. Stdin closed ends it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fakes.dataflows import DEFAULT_TOKEN, FakeDataFlows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument(
        "--rate-limit", type=int, default=600, help="requests a minute (DataFlows: 600)"
    )
    args = parser.parse_args()
    with FakeDataFlows(token=DEFAULT_TOKEN) as fake:
        fake.delay = args.delay
        fake.rate_limit = args.rate_limit or None
        print("URL", fake.url, flush=True)
        for line in sys.stdin:
            command, _, prefix = line.strip().partition(" ")
            if command == "report":
                sent = fake.sent
                pairs = {(s.number, s.message) for s in sent}
                posts = [r for r in fake.requests if r.method == "POST"]
                report = {
                    "requests": len(posts),
                    "sent": len(sent),
                    "distinct": len(pairs),
                    "sizes": [len(r.body["recipient"].split(",")) for r in posts],
                    "requests_with": sum(  # requests carrying a number that starts so
                        1
                        for r in posts
                        if prefix
                        and any(n.startswith(prefix) for n in r.body["recipient"].split(","))
                    ),
                }
                print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
