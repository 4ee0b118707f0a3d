"""The baseline: a bare aiosmtpd server whose handler keeps nothing (or fsyncs each message).

Run as its own process by ``run.py``; prints ``PORT <n>`` once listening, serves until
stdin closes. ``--fsync DIR`` writes each message to one file in DIR and fsyncs it before
answering, the simplest durable server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from aiosmtpd.smtp import SMTP


class KeepNothing:
    async def handle_DATA(self, _server, _session, _envelope):  # noqa: N802
        return "250 2.0.0 OK"


class FsyncEach:
    def __init__(self, directory: Path) -> None:
        self.fd = os.open(directory / "spool", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    async def handle_DATA(self, _server, _session, envelope):  # noqa: N802
        os.write(self.fd, envelope.original_content or b"")
        os.fsync(self.fd)  # in the loop, as a simple durable handler does
        return "250 2.0.0 OK"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fsync", type=Path, default=None)
    args = parser.parse_args()
    handler = FsyncEach(args.fsync) if args.fsync else KeepNothing()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="baseline", decode_data=False, loop=loop),
        host="127.0.0.1",
        port=0,
    )
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
