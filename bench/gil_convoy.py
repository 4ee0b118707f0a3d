"""Why the reader process sets a short GIL switch interval: group commits beside a busy thread.

The reader process reads mail on one thread and commits on another. sqlite3 gives up the
GIL at every step; getting it back from a thread that is busy in Python waits up to the
switch interval (5 ms by default) each time. This times a group commit of ten messages
alone, then beside a thread that never waits, at the default interval and at the reader's
``SWITCH_INTERVAL``, and prints each as a ratio to the commit alone.

    .venv/bin/python bench/gil_convoy.py
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

from mail2sms.limits import Quota
from mail2sms.models import NewMessage
from mail2sms.queue import Queue
from mail2sms.reader_process import SWITCH_INTERVAL

GROUP = 10
GROUPS = 30


def _group(start: int) -> list[tuple[NewMessage, float | None, Quota | None]]:
    now = time.time()
    return [
        (
            NewMessage(
                envelope_from="<alice@example.com>",
                from_header="alice@example.com",
                subject="61412345678",
                message_id=f"<{start + i}@bench.test>",
                recipients=("+61412345678",),
                text="Server room temperature is 31 C " * 5,
                sender_id="Bench",
                received_at=now,
                size=300,
                headers="From: alice@example.com\n",
            ),
            now - 86400,
            Quota("alice@example.com"),
        )
        for i in range(GROUP)
    ]


def _time_commits(queue: Queue, first: int) -> float:
    """Seconds per group commit, over ``GROUPS`` of them."""
    started = time.perf_counter()
    for n in range(GROUPS):
        queue.enqueue_group(_group(first + n * GROUP))
    return (time.perf_counter() - started) / GROUPS


def _beside_busy_thread(queue: Queue, first: int, interval: float) -> float:
    stop = threading.Event()

    def busy() -> None:
        total = 0
        while not stop.is_set():
            for i in range(1000):
                total += i

    sys.setswitchinterval(interval)
    thread = threading.Thread(target=busy)
    thread.start()
    try:
        return _time_commits(queue, first)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(0.005)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, Queue(Path(tmp) / "queue.sqlite3") as queue:
        _time_commits(queue, 0)  # warm up: schema, page cache
        alone = _time_commits(queue, 1_000_000)
        default = _beside_busy_thread(queue, 2_000_000, 0.005)
        short = _beside_busy_thread(queue, 3_000_000, SWITCH_INTERVAL)
    print(f"group commit of {GROUP}, alone:                         {alone * 1e3:8.2f} ms")
    print(
        f"beside a busy thread, switch interval 5 ms:        {default * 1e3:8.2f} ms"
        f" ({default / alone:.0f} x alone)"
    )
    print(
        f"beside a busy thread, switch interval {SWITCH_INTERVAL * 1e3:g} ms:      "
        f"{short * 1e3:8.2f} ms ({short / alone:.1f} x alone)"
    )


if __name__ == "__main__":
    main()
