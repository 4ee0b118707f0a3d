"""Command line: ``serve``, ``check-config``, ``queue …``; the only place that prints or exits.

Exit codes follow sysexits.h where one fits: 78 (EX_CONFIG) for configuration problems,
75 (EX_TEMPFAIL) when the queue cannot be opened, 1 for an unknown queue id.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mail2sms import __version__
from mail2sms.config import Settings, load_config
from mail2sms.errors import (
    ConfigError,
    InternalError,
    NotFoundError,
    ProviderAccountError,
    ProviderError,
    QueueError,
    RelayError,
)
from mail2sms.models import CANCELLED_BY_ADMIN

if TYPE_CHECKING:  # the queue module is imported only by the queue commands
    from mail2sms.queue import Queue, QueueEntry

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 64
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78
DEFAULT_CONFIG = Path("/etc/mail2sms/config.toml")


def _default_config() -> Path:
    return Path(os.environ.get("MAIL2SMS_CONFIG") or DEFAULT_CONFIG)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (a function so tests and docs can inspect it)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        type=Path,
        default=argparse.SUPPRESS,  # so "-c" works before or after the command
        help="config file (default: $MAIL2SMS_CONFIG, then /etc/mail2sms/config.toml)",
    )
    parser = argparse.ArgumentParser(
        prog="mail2sms", description="Email-to-SMS bridge daemon.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"mail2sms {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", parents=[common], help="run the daemon in the foreground")
    check = sub.add_parser(
        "check-config", parents=[common], help="validate the config; exit 78 if bad"
    )
    check.add_argument(
        "--online",
        action="store_true",
        help="also ask the provider whether the credentials work (and show the balance)",
    )
    sub.add_parser(
        "hash-password",
        parents=[common],
        help="read a password from stdin, print its hash for [[smtp.users]] password_hash",
    )
    queue = sub.add_parser("queue", parents=[common], help="inspect and manage queued messages")
    qsub = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    qlist = qsub.add_parser("list", parents=[common], help="list pending messages")
    qlist.add_argument("--all", action="store_true", help="include finished messages")
    qlist.add_argument("--json", action="store_true", help="one JSON object per message")
    show = qsub.add_parser("show", parents=[common], help="show one message and its recipients")
    show.add_argument("queue_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="as JSON")
    retry = qsub.add_parser(
        "retry", parents=[common], help="make waiting recipients and bounces due now"
    )
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("queue_id", metavar="ID", nargs="?", help="one message")
    which.add_argument("--all", action="store_true", help="every waiting message")
    for name, text in (
        ("delete", "delete a message: no SMS, no bounce"),
        ("bounce", "give up on a message now: its sender gets a bounce (if bounce.relay is set)"),
    ):
        qsub.add_parser(name, parents=[common], help=text).add_argument("queue_id", metavar="ID")
    return parser


def _load(path: Path) -> Settings:
    return load_config(path)


def _print_problems(path: Path, error: ConfigError) -> None:
    print(f"mail2sms: {path}: configuration is not valid:", file=sys.stderr)
    for problem in error.problems:
        print(f"  - {problem}", file=sys.stderr)


def cmd_check_config(path: Path, *, online: bool = False) -> int:
    """Validate and summarise; with ``online``, ask the provider too. Never print a secret."""
    try:
        settings = _load(path)
    except ConfigError as error:
        _print_problems(path, error)
        return EX_CONFIG
    print(f"{path}: OK")
    print(f"  listen:   {settings.smtp.listen} as {settings.smtp.hostname}")
    gateways = [*settings.gateway.addresses, *(f"<number>@{d}" for d in settings.gateway.domains)]
    print(f"  gateways: {', '.join(gateways)}")
    print(
        f"  provider: {settings.provider.kind}"
        + (f" at {settings.provider.base_url}" if settings.provider.base_url else "")
    )
    print(f"  queue:    {settings.queue.path}")
    limits = settings.limits
    countries = limits.destinations(settings.gateway.default_region).countries
    print(
        f"  limits:   SMS to {', '.join(countries)}; {limits.max_recipients} numbers a message;"
        f" {limits.per_sender_per_hour or 'no limit'}/h a sender,"
        f" {limits.per_recipient_per_hour or 'no limit'}/h a number,"
        f" {limits.per_day or 'no limit'} a day"
    )
    smtp = settings.smtp
    if smtp.tls_cert is not None:
        implicit = f"; implicit TLS on {smtp.tls_listen}" if smtp.tls_listen else ""
        print(f"  tls:      STARTTLS with {smtp.tls_cert}{implicit}")
    if smtp.users:  # names only: the hashes are secrets
        print(f"  users:    {', '.join(user.name for user in smtp.users)}")
    for note in settings.warnings():
        print(f"  warning:  {note}")
    return _check_online(settings) if online else EX_OK


def _check_online(settings: Settings) -> int:
    """A refused credential is a configuration error (78); an unreachable provider, 75."""
    from mail2sms.app import check_account, check_relay  # noqa: PLC0415  only --online

    try:
        status = asyncio.run(check_account(settings))
    except ProviderAccountError as error:
        print(f"mail2sms: the provider refused the credentials: {error}", file=sys.stderr)
        return EX_CONFIG
    except ProviderError as error:
        print(f"mail2sms: cannot check the account now: {error}", file=sys.stderr)
        return EX_TEMPFAIL
    except ConfigError as error:
        for problem in error.problems:
            print(f"mail2sms: {problem}", file=sys.stderr)
        return EX_CONFIG
    print(f"  account:  {status.detail}")
    if status.balance is not None:
        print(f"  balance:  {status.balance}")
    if settings.bounce.relay is None:
        return EX_OK
    try:
        asyncio.run(check_relay(settings))
    except RelayError as error:
        print(f"mail2sms: bounces cannot be sent now: {error}", file=sys.stderr)
        return EX_TEMPFAIL
    print(f"  bounces:  {settings.bounce.relay} accepts us (connect, EHLO, TLS and AUTH as set)")
    return EX_OK


def cmd_hash_password() -> int:
    """Print a ``password_hash`` for ``[[smtp.users]]``; the password never reaches argv.

    On a terminal it is asked for without echo; otherwise the first line of stdin is it.
    """
    from mail2sms.passwords import hash_password  # noqa: PLC0415  only this command hashes

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        print("mail2sms: an empty password is not allowed", file=sys.stderr)
        return EX_USAGE
    print(hash_password(password))
    return EX_OK


def cmd_serve(path: Path) -> int:
    """Run in the foreground until SIGTERM or SIGINT."""
    from mail2sms import log  # noqa: PLC0415  only serve needs logging and the event loop
    from mail2sms.app import serve  # noqa: PLC0415

    try:
        settings = _load(path)
    except ConfigError as error:
        _print_problems(path, error)
        return EX_CONFIG
    log.configure(show_numbers=settings.log.show_numbers, level=settings.log.level)

    def reload_settings() -> Settings:
        """Re-read the file for SIGHUP; the log settings apply at once."""
        new = _load(path)
        log.configure(show_numbers=new.log.show_numbers, level=new.log.level)
        return new

    async def main() -> None:
        stop, reload = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload.set)  # systemctl reload
        await serve(settings, stop, reload=reload, load=reload_settings)

    try:
        asyncio.run(main())
    except ConfigError as error:  # e.g. the TLS certificate changed after validation
        _print_problems(path, error)
        return EX_CONFIG
    except (QueueError, InternalError) as error:
        print(f"mail2sms: {error}", file=sys.stderr)
        return EX_TEMPFAIL if isinstance(error, QueueError) else EX_SOFTWARE
    except OSError as error:
        where = " or ".join(str(a) for a in (settings.smtp.listen, settings.smtp.tls_listen) if a)
        print(f"mail2sms: cannot listen on {where}: {error.strerror}", file=sys.stderr)
        return EX_FAILURE
    return EX_OK


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _age(epoch: float, now: float) -> str:
    seconds = max(0, int(now - epoch))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def cmd_queue(path: Path, args: argparse.Namespace) -> int:
    """``mailq``/``postsuper``-like access; safe while the daemon runs (SQLite WAL)."""
    from mail2sms.queue import Queue  # noqa: PLC0415  only queue commands open the queue

    try:
        settings = _load(path)
    except ConfigError as error:
        _print_problems(path, error)
        return EX_CONFIG
    if not settings.queue.path.exists():
        print(
            f"mail2sms: no queue at {settings.queue.path} (queue.path): check the path, "
            "and run the commands from the daemon's working directory if it is relative",
            file=sys.stderr,
        )
        return EX_FAILURE
    try:
        queue = Queue(settings.queue.path)
        try:
            _QUEUE_COMMANDS[args.queue_command](queue, args, time.time())
        finally:
            queue.close()
    except NotFoundError:
        print(f"mail2sms: no queued message with id {args.queue_id!r}", file=sys.stderr)
        return EX_FAILURE
    except QueueError as error:  # cannot open, locked past the busy timeout, disk full
        print(f"mail2sms: {error}; try again", file=sys.stderr)
        return EX_TEMPFAIL
    return EX_OK


def _queue_list(queue: Queue, args: argparse.Namespace, now: float) -> None:
    entries = queue.entries(include_finished=args.all)
    if args.json:
        for entry in entries:
            print(json.dumps(asdict(entry) | {"state": entry.state}, default=str))
        return
    if not entries:
        print("queue is empty")
        return
    print(f"{'ID':<16} {'AGE':>5} {'STATE':<16} {'TRIES':>5} {'NEXT':>5}  SENDER -> RECIPIENTS")
    for entry in entries:
        tries = max((r.attempts for r in entry.recipients), default=0)
        numbers = ", ".join(r.number for r in entry.recipients)
        waiting = [r.next_attempt_at for r in entry.recipients if r.state == "pending"]
        next_in = _age(now, min(waiting)) if waiting else "-"
        print(
            f"{entry.id:<16} {_age(entry.received_at, now):>5} {_state(entry):<16} "
            f"{tries:>5} {next_in:>5}  {entry.envelope_from or '<>'} -> {numbers}"
        )
        for last_error in sorted({r.last_error for r in entry.recipients if r.last_error}):
            print(f"{'':>16} last error: {last_error}")


def _queue_show(queue: Queue, args: argparse.Namespace, now: float) -> None:
    entry = queue.get(args.queue_id)
    if args.json:
        print(json.dumps(asdict(entry) | {"state": entry.state}, default=str, indent=2))
        return
    print(f"id:        {entry.id}")
    print(f"state:     {_state(entry)}")
    print(f"received:  {_when(entry.received_at)} ({_age(entry.received_at, now)} ago)")
    print(f"sender:    {entry.envelope_from}")
    print(f"from:      {entry.from_header}")
    print(f"subject:   {entry.subject}")
    print(f"sender id: {entry.sender_id}")
    print(f"text:      {entry.text}")
    if entry.bounce_error:
        print(f"bounce:    {entry.bounce_error}")
    for r in entry.recipients:
        print(
            f"  {r.number:<16} {r.state:<9} tries={r.attempts} "
            f"next={_when(r.next_attempt_at)} ref={r.provider_ref or '-'}"
            + (f" status={r.dsn_status}" if r.dsn_status else "")
            + (" possible-duplicate" if r.possible_duplicate else "")
            + (f" error={r.last_error}" if r.last_error else "")
        )


def _queue_retry(queue: Queue, args: argparse.Namespace, now: float) -> None:
    count = queue.retry_now(None if args.all else args.queue_id, now=now)
    what = "all messages" if args.all else args.queue_id
    print(f"{what}: {count} recipient(s) and bounce(s) due now")


def _queue_bounce(queue: Queue, args: argparse.Namespace, now: float) -> None:
    count = queue.give_up(args.queue_id, now=now, reason=CANCELLED_BY_ADMIN)
    entry = queue.get(args.queue_id)
    inflight = sum(r.state == "inflight" for r in entry.recipients)
    note = f"; {inflight} being sent now, the bounce follows when they finish" if inflight else ""
    print(f"{args.queue_id}: gave up on {count} recipient(s){note}")


def _state(entry: QueueEntry) -> str:
    """The message's state, with its bounce's when one is owed (``failed, bounced``)."""
    if entry.bounce_state is None:
        return entry.state
    bounce = {"pending": "bounce due", "inflight": "bouncing", "sent": "bounced"}
    return f"{entry.state}, {bounce.get(entry.bounce_state, 'not bounced')}"


def _queue_delete(queue: Queue, args: argparse.Namespace, _now: float) -> None:
    queue.delete(args.queue_id)
    print(f"{args.queue_id}: deleted")


_QUEUE_COMMANDS: dict[str, Callable[[Queue, argparse.Namespace, float], None]] = {
    "list": _queue_list,
    "show": _queue_show,
    "retry": _queue_retry,
    "delete": _queue_delete,
    "bounce": _queue_bounce,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mail2sms`` console script."""
    args = build_parser().parse_args(argv)
    path = getattr(args, "config", None) or _default_config()
    if args.command == "serve":
        return cmd_serve(path)
    if args.command == "check-config":
        return cmd_check_config(path, online=args.online)
    if args.command == "queue":
        return cmd_queue(path, args)
    if args.command == "hash-password":
        return cmd_hash_password()
    return EX_USAGE
