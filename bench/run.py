"""Benchmark mail2sms against a bare aiosmtpd server, in one run, and check issue 8's targets.

Everything is started here, each in its own process so no part shares an event loop (or
the GIL) with another: the bare aiosmtpd baseline (keeps nothing), the same with one
fsync per message, the fake DataFlows API (``fake_provider.py``, 0 ms and 200 ms), and
``mail2sms serve`` on a temporary queue. Load comes from Postfix's ``smtp-source`` when it
is found ($SMTP_SOURCE, or bench/.tools from ``get-smtp-source.sh``), else from
``loadgen.py``; latency percentiles always come from ``loadgen.py`` (smtp-source reports
none). Prints a table: each target, the measured value, MET or NOT MET.

    .venv/bin/python bench/run.py              # quick: 30 s soak
    .venv/bin/python bench/run.py --soak 600   # the full 10-minute soak
    .venv/bin/python bench/run.py --sweep 1,5,10,20,50  # also write bench/results.json for plot.py
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import shutil
import smtplib
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
SENDER = "alice@example.com"
DOMAIN = "sms.example.com"
TOKEN = "22|fakeDataFlowsToken0123456789abcdefghijklm"


def rss_mb(pid: int) -> float:
    """RSS of a process and its children (mail2sms's reader process counts), in MB."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1]) / 1024
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            total += rss_mb(int(child))
    return total


def smtp_source() -> list[str] | None:
    """The smtp-source command (with its library path), or None."""
    explicit = os.environ.get("SMTP_SOURCE")
    root = HERE / ".tools" / "postfix"
    candidates = [Path(explicit)] if explicit else []
    candidates += [root / "usr/sbin/smtp-source"]
    found = shutil.which("smtp-source")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file():
            libdir = path.parent.parent / "lib" / "postfix"
            env = f"LD_LIBRARY_PATH={libdir}" if libdir.is_dir() else "LD_LIBRARY_PATH="
            return ["env", env, str(path)]
    return None


STARTED: list[subprocess.Popen[str] | subprocess.Popen[bytes]] = []  # ended at exit


class Child:
    """A helper process that says one line when ready and ends when its stdin closes."""

    def __init__(self, argv: list[str], *, prefix: str) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=HERE.parent
        )
        STARTED.append(self.proc)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != prefix:
            raise RuntimeError(f"{argv} said {line!r}")
        self.value = line[1] if len(line) > 1 else ""

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline()

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Mail2sms:
    """``mail2sms serve`` in a temporary directory, started with NOTIFY_SOCKET to time READY."""

    workdir: Path
    provider_url: str
    reader: str = "auto"
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    ready_s: float = 0.0
    queue_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.queue_path = self.workdir / "queue.sqlite3"

    def config(self) -> str:
        # Default delivery settings on purpose (workers, HTTP pool): the targets say so.
        # The anti-pumping [limits] and the connection caps are lifted: the bench is one
        # sender sending thousands of SMS and holding 500 idle connections from one address,
        # which is exactly what they exist to stop.
        return f"""
[smtp]
listen = "127.0.0.1:0"
hostname = "bench.test"
max_connections = 1000
max_connections_per_client = 1000
reader = "{self.reader}"
[limits]
max_recipients = 150
per_sender_per_hour = 0
per_recipient_per_hour = 0
per_day = 0
[gateway]
addresses = ["sms@{DOMAIN}"]
domains = ["{DOMAIN}"]
default_region = "AU"
sender_id = "Bench"
[senders]
allow = ["{SENDER}"]
[provider]
kind = "dataflows"
base_url = "{self.provider_url}"
token = "{TOKEN}"
[queue]
path = "{self.queue_path}"
"""

    def start(self) -> None:
        cfg = self.workdir / "config.toml"
        cfg.write_text(self.config())
        sock_path = self.workdir / "notify.sock"
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        sock.settimeout(30)
        env = dict(os.environ, NOTIFY_SOCKET=str(sock_path))
        log = (self.workdir / "mail2sms.log").open("ab")
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [PY, "-m", "mail2sms", "serve", "-c", str(cfg)], env=env, stderr=log, stdout=log
        )
        STARTED.append(self.proc)
        try:
            while True:
                datagram = sock.recv(4096).decode()
                if "READY=1" in datagram:
                    break
        finally:
            sock.close()
        self.ready_s = time.perf_counter() - started
        status = next(x for x in datagram.splitlines() if x.startswith("STATUS="))
        self.port = int(status.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None

    def sent(self) -> int:
        conn = sqlite3.connect(f"file:{self.queue_path}?mode=ro", uri=True, timeout=5)
        try:
            return int(
                conn.execute("SELECT COUNT(*) FROM recipients WHERE state = 'sent'").fetchone()[0]
            )
        finally:
            conn.close()

    def wait_idle(self, timeout: float) -> None:
        """Poll the queue until nothing is pending or in flight."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            conn = sqlite3.connect(f"file:{self.queue_path}?mode=ro", uri=True, timeout=5)
            try:
                left = conn.execute(
                    "SELECT COUNT(*) FROM recipients WHERE state IN ('pending', 'inflight')"
                ).fetchone()[0]
            finally:
                conn.close()
            if not left:
                return
            time.sleep(0.05)

    def wait_sent(self, n: int, timeout: float) -> float | None:
        """Poll the queue until n recipients are sent; the time it happened, or None."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.sent() >= n:
                return time.perf_counter()
            time.sleep(0.02)
        return None


def load_python(port: int, **options: object) -> dict[str, float]:
    argv = [PY, str(HERE / "loadgen.py"), "127.0.0.1", str(port)]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value not in (False, None):
            argv += [flag, str(value)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def load(
    port: int, args: argparse.Namespace, tool: list[str] | None, *, reuse: bool = True
) -> dict[str, float]:
    """Flat-out load: smtp-source if there is one (its wall time), else loadgen.py.

    ``reuse``: several messages per connection; else a connection for each.
    """
    if tool is None:
        return load_python(
            port,
            sessions=args.sessions,
            messages=args.messages,
            size=args.size,
            connection_per_message=not reuse,
        )
    reusing = ["-d"] if reuse else []
    argv = [*tool, *reusing, "-s", str(args.sessions), "-m", str(args.messages)]
    argv += ["-l", str(args.size)]
    argv += ["-f", SENDER, "-t", f"61412345678@{DOMAIN}", f"127.0.0.1:{port}"]
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    return {"sent": args.messages, "elapsed": elapsed, "rate": args.messages / elapsed}


@dataclass
class Row:
    target: str
    measured: str
    met: bool | None  # None: a reference figure, no target

    def __post_init__(self) -> None:
        print(f"  {self.target}: {self.measured}", file=sys.stderr)  # progress


def fmt(rate: float) -> str:
    return f"{rate:,.0f} msg/s"


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    return max(runs, key=lambda r: r["rate"])


def ratios(runs: list[dict[str, float]], against: list[dict[str, float]]) -> str:
    """Each round's rate over the one it ran beside, e.g. "0.91, 1.02, 0.88"."""
    return ", ".join(f"{r['rate'] / a['rate']:.2f}" for r, a in zip(runs, against, strict=True))


def alarm_storm(port: int, args: argparse.Namespace, text: str) -> dict[str, float]:
    """One text to a different number per message (Python load), so each SMS can be counted."""
    return load_python(
        port,
        sessions=args.sessions,
        messages=args.messages,
        size=args.size,
        distinct_numbers=True,
        same_text=True,
        text=text,
    )


def ready_time(workdir: Path, provider_url: str, reader: str) -> float:
    """Seconds from exec to READY of a fresh ``mail2sms serve`` (stopped again)."""
    workdir.mkdir()
    app = Mail2sms(workdir, provider_url, reader)
    try:
        app.start()
    finally:
        app.stop()
    return app.ready_s


def bench(args: argparse.Namespace) -> list[Row]:
    # Installed from a wheel or sdist, pip compiles the package to bytecode; an editable
    # checkout may not have it (PYTHONDONTWRITEBYTECODE): compile it so start-up is timed
    # as installed, not with a compile of every module.
    compileall.compile_dir(str(HERE.parent / "mail2sms"), quiet=1)
    rows: list[Row] = []
    tool = None if args.python_load else smtp_source()
    print(f"load: {'smtp-source' if tool else 'loadgen.py (pure Python)'}", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="mail2sms-bench-", dir=args.tmpdir))
    try:
        # ---- baselines -------------------------------------------------------------
        # The bare baseline runs beside mail2sms, each flat-out run of one followed by one
        # of the other: this machine's speed drifts by a third within minutes, and
        # interleaved runs see the same drift.
        bare = Child([PY, str(HERE / "baseline.py")], prefix="PORT")
        (tmp / "fsync").mkdir()
        fs = Child([PY, str(HERE / "baseline.py"), "--fsync", str(tmp / "fsync")], prefix="PORT")
        fsync_runs = [load(int(fs.value), args, tool) for _ in range(args.repeat)]
        fs.close()
        fsync_rate = best(fsync_runs)["rate"]
        rows.append(Row("aiosmtpd + one fsync per message (reference)", fmt(fsync_rate), None))

        # ---- mail2sms, provider answers at once, and one whose provider takes 200 ms ---
        fake = Child([PY, str(HERE / "fake_provider.py")], prefix="URL")
        slow = Child([PY, str(HERE / "fake_provider.py"), "--delay", "0.2"], prefix="URL")
        app = Mail2sms(tmp / "fast", fake.value, args.reader)
        app.workdir.mkdir()
        app.start()
        starts = sorted(
            [app.ready_s, *(ready_time(tmp / f"start{i}", fake.value, args.reader) for i in (1, 2))]
        )
        ready = starts[1]  # the median of three starts: one start is one noisy sample
        rows.append(
            Row(
                "start to READY <= 1 s",
                f"{ready:.2f} s (of {', '.join(f'{x:.2f}' for x in starts)})",
                ready <= 1.0,
            )
        )
        time.sleep(1)
        idle = rss_mb(app.proc.pid)  # type: ignore[union-attr]
        rows.append(Row("RSS idle <= 60 MB", f"{idle:.1f} MB", idle <= 60))
        # Delivery through the slow provider, on a fresh instance: an alarm storm.
        slow_app = Mail2sms(tmp / "slow", slow.value, args.reader)
        slow_app.workdir.mkdir()
        slow_app.start()
        started = time.perf_counter()
        slow_load = alarm_storm(slow_app.port, args, "Alarm storm: site 9 down")
        accepted_at = started + slow_load["elapsed"]
        done = slow_app.wait_sent(args.messages, 600)
        delivery = args.messages / (done - started) if done else 0.0
        rows.append(
            Row(
                "delivery with a 200 ms provider >= 200 msg/s",
                f"{delivery:,.0f} msg/s ({json.loads(slow.ask('report'))['requests']} requests;"
                f" all sent {((done or accepted_at) - accepted_at):.1f} s after the last 250)",
                delivery >= 200,
            )
        )
        # Flat-out accept rate: bare aiosmtpd, mail2sms, and mail2sms while its slow
        # provider works, by turns (this machine's speed drifts by a third within minutes,
        # and runs made by turns see the same drift). smtp-source sends one text to one
        # number, which DataFlows' 10 requests/s deliver in minutes: each instance's
        # delivery is busy with that backlog throughout, the slow one with 200 ms requests.
        # The first burst after an idle minute starts the reader process ("auto"): it is
        # run and reported first, and not counted in the best of the flat-out runs.
        first = load(app.port, args, tool)
        load(slow_app.port, args, tool)
        rows.append(Row("first burst on an idle daemon (reference)", fmt(first["rate"]), None))
        bare_runs, runs, slow_runs = [], [], []
        for _ in range(args.repeat):
            bare_runs.append(load(int(bare.value), args, tool))
            runs.append(load(app.port, args, tool))
            slow_runs.append(load(slow_app.port, args, tool))
            print(
                f"  round: bare {bare_runs[-1]['rate']:,.0f}, mail2sms {runs[-1]['rate']:,.0f}"
                f" ({runs[-1]['rate'] / bare_runs[-1]['rate']:.2f} x),"
                f" with the 200 ms provider {slow_runs[-1]['rate']:,.0f} msg/s",
                file=sys.stderr,
            )
        # One connection per message, the way Postfix, swaks and smtplib send: each
        # connection costs the server more than the message does.
        bare_each, each = [], []
        for _ in range(args.repeat):
            bare_each.append(load(int(bare.value), args, tool, reuse=False))
            each.append(load(app.port, args, tool, reuse=False))
        rows.append(
            Row(
                "one connection per message, mail2sms / bare aiosmtpd (reference)",
                f"{fmt(best(each)['rate'])} / {fmt(best(bare_each)['rate'])}"
                f" = {best(each)['rate'] / best(bare_each)['rate']:.2f} x"
                f" (rounds: {ratios(each, bare_each)})",
                None,
            )
        )
        bare.close()
        slow_requests = json.loads(slow.ask("report"))["requests"]
        slow_app.stop()
        slow.close()
        bare_rate, accept, busy_accept = best(bare_runs)["rate"], best(runs), best(slow_runs)
        rows.append(Row("bare aiosmtpd, keeps nothing (reference)", fmt(bare_rate), None))
        app.stop()
        fake.close()  # a fresh fake: DataFlows' 600 a minute counts per account
        fake = Child([PY, str(HERE / "fake_provider.py")], prefix="URL")
        app = Mail2sms(tmp / "e2e", fake.value, args.reader)
        app.workdir.mkdir()
        app.start()
        ratio = accept["rate"] / bare_rate
        rows.append(
            Row(
                "accept rate >= 0.75 x bare aiosmtpd (every 250 durable)",
                f"{fmt(accept['rate'])} = {ratio:.2f} x bare, {accept['rate'] / fsync_rate:.2f}"
                " x fsync-each (rounds: "
                f"{ratios(runs, bare_runs)})",
                ratio >= 0.75,
            )
        )
        slow_ratio = busy_accept["rate"] / accept["rate"]
        rows.append(
            Row(
                "accept rate unchanged with a 200 ms provider (>= 0.9 x)",
                f"{fmt(busy_accept['rate'])} = {slow_ratio:.2f} x (rounds: "
                f"{ratios(slow_runs, runs)}; {slow_requests} slow requests by then)",
                slow_ratio >= 0.9,
            )
        )
        # End to end: an alarm storm, one text to many numbers (Python load: distinct numbers).
        before = app.sent()
        start_report = json.loads(fake.ask("report"))
        before_requests, before_fake_sent = start_report["requests"], start_report["sent"]
        started = time.perf_counter()
        e2e_load = alarm_storm(app.port, args, "Alarm storm: site 7 down")
        done = app.wait_sent(before + args.messages, 600)
        e2e = (done - started) if done else float("inf")
        report = json.loads(fake.ask("report"))
        lost = args.messages - (app.sent() - before)
        # SMS the provider got beyond those recorded sent (the instance before is stopped)
        twice = (report["sent"] - before_fake_sent) - (app.sent() - before)
        rows.append(
            Row(
                "end to end (0 ms provider) <= 2 x accept time",
                f"{e2e:.2f} s vs accept {e2e_load['elapsed']:.2f} s"
                f" ({e2e / e2e_load['elapsed']:.2f} x);"
                f" {report['requests'] - before_requests} requests",
                e2e <= 2 * e2e_load["elapsed"],
            )
        )
        rows.append(
            Row("none lost, none twice", f"lost {lost}, twice {twice}", lost == 0 and twice == 0)
        )
        # Latency at half the maximum rate.
        half = accept["rate"] / 2
        lat = load_python(
            app.port,
            sessions=args.sessions,
            messages=args.messages,
            size=args.size,
            rate=half,
            distinct_numbers=True,  # one text to many numbers: no delivery backlog is left
            same_text=True,
        )
        rows.append(
            Row(
                f"latency DATA->250 at {half:.0f} msg/s: p50 <= 10 ms",
                f"{lat['p50_ms']:.1f} ms",
                lat["p50_ms"] <= 10,
            )
        )
        rows.append(Row("    ... p99 <= 50 ms", f"{lat['p99_ms']:.1f} ms", lat["p99_ms"] <= 50))
        # A 150-recipient message reaches DataFlows in 2 requests.
        app.wait_idle(120)  # the latency run's SMS first: then only this one is sent
        sent_before = app.sent()
        numbers = [f"+6143{i:07d}@{DOMAIN}" for i in range(150)]
        mail = EmailMessage()
        mail["From"], mail["Subject"] = SENDER, "many"
        mail.set_content("One message to 150 numbers")
        with smtplib.SMTP("127.0.0.1", app.port) as client:
            client.send_message(mail, from_addr=SENDER, to_addrs=numbers)
        app.wait_sent(sent_before + 150, 120)
        requests = json.loads(fake.ask("report 6143"))["requests_with"]
        rows.append(Row("150-recipient message in 2 requests", f"{requests}", requests == 2))
        # Memory with 500 idle connections.
        holder = Child(
            [PY, str(HERE / "loadgen.py"), "127.0.0.1", str(app.port), "--idle", "500"],
            prefix="READY",
        )
        busy = rss_mb(app.proc.pid)  # type: ignore[union-attr]
        holder.close()
        rows.append(Row("RSS with 500 idle connections <= 120 MB", f"{busy:.1f} MB", busy <= 120))
        # Soak: steady load, RSS sampled; growth is the last sample over the first after warm-up.
        samples = soak(app, args)
        warm, last = samples[0], samples[-1]
        growth = last - warm
        rows.append(
            Row(
                f"no RSS growth over a {args.soak:.0f} s soak (< 5 MB)",
                f"{warm:.1f} -> {last:.1f} MB (peak {max(samples):.1f})",
                growth < 5,
            )
        )
        app.stop()
        fake.close()

        if args.sweep:
            sweep(args, tmp)
    finally:
        for proc in STARTED:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def soak(app: Mail2sms, args: argparse.Namespace) -> list[float]:
    """Send at a steady 100 msg/s for --soak seconds; RSS samples after a warm-up chunk."""
    assert app.proc is not None
    chunk = 10.0
    load_python(app.port, sessions=10, messages=500, rate=100, size=args.size)  # warm-up
    samples = [rss_mb(app.proc.pid)]
    ends = time.perf_counter() + args.soak
    while time.perf_counter() < ends:
        load_python(app.port, sessions=10, messages=int(100 * chunk), rate=100, size=args.size)
        samples.append(rss_mb(app.proc.pid))
    return samples


def sweep(args: argparse.Namespace, tmp: Path) -> None:
    """Accept rate and p99 latency against concurrency, baseline beside mail2sms."""
    levels = [int(x) for x in args.sweep.split(",")]
    results: dict[str, list[dict[str, float]]] = {"bare aiosmtpd": [], "mail2sms": []}
    bare = Child([PY, str(HERE / "baseline.py")], prefix="PORT")
    fake = Child([PY, str(HERE / "fake_provider.py")], prefix="URL")
    app = Mail2sms(tmp / "sweep", fake.value, args.reader)
    app.workdir.mkdir()
    app.start()
    try:
        for level in levels:
            for name, port in (("bare aiosmtpd", int(bare.value)), ("mail2sms", app.port)):
                run = load_python(port, sessions=level, messages=args.messages, size=args.size)
                run["sessions"] = level
                results[name].append(run)
                print(
                    f"sweep {name} x{level}: {run['rate']:.0f} msg/s p99 {run['p99_ms']:.1f}",
                    file=sys.stderr,
                )
    finally:
        app.stop()
        fake.close()
        bare.close()
    (HERE / "results.json").write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of flat-out runs; the best of each counts"
    )
    parser.add_argument("--soak", type=float, default=30.0, help="seconds (600 for the full)")
    parser.add_argument("--sweep", default="", help="concurrency levels, e.g. 1,5,10,20,50")
    parser.add_argument("--python-load", action="store_true", help="never use smtp-source")
    parser.add_argument("--tmpdir", default=None, help="where the queues go (a real disk)")
    parser.add_argument(
        "--reader", default="auto", choices=("auto", "thread", "process"), help="smtp.reader"
    )
    args = parser.parse_args()
    rows = bench(args)
    width = max(len(r.target) for r in rows)
    print(f"\n{'target':<{width}}  {'result':<8}  measured")
    for row in rows:
        verdict = "-" if row.met is None else ("MET" if row.met else "NOT MET")
        print(f"{row.target:<{width}}  {verdict:<8}  {row.measured}")
    print(
        f"\ncpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}, "
        f"python {sys.version.split()[0]}"
    )


if __name__ == "__main__":
    main()
