"""A pure-Python SMTP load generator (asyncio streams), for machines without smtp-source.

It speaks just enough SMTP to send: EHLO once per session, then MAIL/RCPT/DATA per message
over the same connection, like ``smtp-source -d``; with ``--connection-per-message``, a
connection, EHLO and QUIT for each, as Postfix, swaks and smtplib send. The latency it
reports runs from the end of the message data (the ``.`` line written) to the ``250``
read: what the server spends committing. Raw streams rather than aiosmtplib: less client
CPU on a 2-core box, and the timestamp sits exactly at the end of DATA.

Prints one JSON object: sent, refused, elapsed seconds, rate, latency percentiles (ms).
``--idle N`` instead opens N connections, says EHLO, prints ``READY`` and holds them until
stdin closes (for the memory figure with many idle clients).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def message(i: int, size: int, sender: str, rcpt: str, text: str, *, same: bool) -> bytes:
    head = (
        f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: bench {i}\r\n"
        f"Message-ID: <bench.{i}.{time.time_ns()}@loadgen>\r\n\r\n"
    )
    body = f"{text} " if same else f"{text} {i} "
    pad = max(0, size - len(head) - len(body) - 2)
    return (head + body + "x" * pad + "\r\n").encode()


async def reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return int(line[:3])


async def quit_(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"QUIT\r\n")
    await reply(reader)
    writer.close()


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.next = 0
        self.sent = 0
        self.refused = 0
        self.latencies: list[float] = []
        self.start = 0.0

    def rcpt(self, i: int) -> str:
        number = f"+6141{i % 10_000_000:07d}" if self.args.distinct_numbers else "+61412345678"
        return f"{number}@{self.args.domain}"

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.args.host, self.args.port)
        await reply(reader)
        writer.write(b"EHLO loadgen\r\n")
        await reply(reader)
        return reader, writer

    async def session(self) -> None:
        args = self.args
        reader, writer = await self.connect()
        while self.next < args.messages:
            i = self.next
            self.next += 1
            if args.rate:
                due = self.start + i / args.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if writer.is_closing():  # the last message's connection was closed after it
                reader, writer = await self.connect()
            rcpt = self.rcpt(i)
            writer.write(f"MAIL FROM:<{args.sender}>\r\n".encode())
            code = await reply(reader)
            writer.write(f"RCPT TO:<{rcpt}>\r\n".encode())
            code = max(code, await reply(reader))
            writer.write(b"DATA\r\n")
            if await reply(reader) != 354 or code >= 400:
                self.refused += 1
                writer.write(b"RSET\r\n")
                await reply(reader)
                if args.connection_per_message:
                    await quit_(reader, writer)
                continue
            writer.write(
                message(i, args.size, args.sender, rcpt, args.text, same=args.same_text) + b".\r\n"
            )
            t0 = time.perf_counter()
            code = await reply(reader)
            self.latencies.append(time.perf_counter() - t0)
            if code == 250:
                self.sent += 1
            else:
                self.refused += 1
            if args.connection_per_message:
                await quit_(reader, writer)
        if not writer.is_closing():
            await quit_(reader, writer)

    async def main(self) -> dict[str, float]:
        self.start = time.perf_counter()
        await asyncio.gather(*(self.session() for _ in range(self.args.sessions)))
        elapsed = time.perf_counter() - self.start
        ms = [x * 1000 for x in self.latencies]
        return {
            "sent": self.sent,
            "refused": self.refused,
            "elapsed": elapsed,
            "rate": self.sent / elapsed,
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "max_ms": max(ms, default=float("nan")),
        }


async def idle(args: argparse.Namespace) -> None:
    conns = []
    for _ in range(args.idle):
        reader, writer = await asyncio.open_connection(args.host, args.port)
        await reply(reader)
        writer.write(b"EHLO idle\r\n")
        await reply(reader)
        conns.append(writer)
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for writer in conns:
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s in all (0: flat out)")
    parser.add_argument("--sender", default="alice@example.com")
    parser.add_argument("--domain", default="sms.example.com")
    parser.add_argument("--text", default="Alarm")
    parser.add_argument("--distinct-numbers", action="store_true", help="one number each")
    parser.add_argument("--same-text", action="store_true", help="every body the same")
    parser.add_argument("--idle", type=int, default=0)
    parser.add_argument(
        "--connection-per-message", action="store_true", help="connect, EHLO and QUIT for each"
    )
    args = parser.parse_args()
    if args.idle:
        asyncio.run(idle(args))
        return
    print(json.dumps(asyncio.run(Run(args).main())), flush=True)


if __name__ == "__main__":
    main()
