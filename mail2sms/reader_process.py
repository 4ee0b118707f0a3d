"""Read mail in a second process while the gateway is busy, so it uses a second CPU core.

Python runs one thread at a time: reading MIME and committing to SQLite in threads of the
daemon takes turns with every SMTP session, and a burst is then limited to one core. The
reader process does those two jobs (``LocalReader``, unchanged) on a core of its own; the
daemon keeps the SMTP protocol, the MAIL and RCPT checks, and delivery. Both open the same
SQLite file (WAL), so what the reader commits is what delivery sends.

``smtp.reader``: "thread" never starts it; "process" keeps one running; "auto" (default, on
a machine with 2 or more CPUs) starts it when several messages are being read at once and
stops it after ``IDLE_STOP`` seconds without mail, so an idle gateway stays one process.
Until it is ready, and whenever it is gone, messages are read in threads as before.

The two talk over a socket pair in length-prefixed pickles (both ends are this program).
The reader ignores SIGTERM and SIGINT (systemd signals every process of the service) and
ends when the daemon closes the socket, after answering what it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pickle
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Literal

from mail2sms.config import Settings
from mail2sms.log import get_logger, together
from mail2sms.queue import DEFAULT_BUSY_TIMEOUT, MAX_GROUP, Queue, StagedGroup
from mail2sms.smtp import (
    PARSE_TOO_SLOW,
    TEMPORARY_ERROR,
    Built,
    LocalReader,
    Outcome,
    Policy,
    Submission,
    judged,
    read_submission,
    refused_outcome,
    stored,
)

log = get_logger(__name__)

ReaderMode = Literal["auto", "thread", "process"]

BUSY_READS = 4
"""Messages being read at once in threads that make "auto" start the reader process."""
IDLE_STOP = 60.0
"""Seconds without mail after which "auto" stops the reader process."""
RESTART_AFTER = 30.0
"""Seconds before starting a reader process again after one failed or died."""
START_TIMEOUT = 30.0
"""Seconds a new reader process has to say it is ready."""
GROUP_FILL = 32
"""Messages already received that are read before the next group is written, at most.

A group written as soon as the last one is on disk holds what was read meanwhile, often
one message while more wait in the socket; reading those first makes fewer, larger
commits (each costs the reading thread a transaction and the process a commit).
"""
GROUP_FILL_TIME = 0.002
"""Seconds after its first read began that a group stops taking more: a slow mail must not
hold back the answers of those read before it."""
STUCK_MARGIN = 5.0
"""Seconds beyond the read time limit and the queue's lock wait before a silent process is stuck."""
SWITCH_INTERVAL = 0.0001
"""Seconds the reading thread may hold the GIL while the commit thread waits for it."""
_HEADER = struct.Struct("!I")


class ReaderGoneError(Exception):
    """The reader process is not there (any more): read the message in a thread instead."""


def _frame(item: object) -> bytes:
    data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def _receive(stream: asyncio.StreamReader) -> tuple[str, int, object] | None:
    """The next frame, or None at the end of the stream."""
    try:
        header = await stream.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        data = await stream.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return _unframe(data)


def _unframe(data: bytes | bytearray) -> tuple[str, int, object]:
    """A frame's body: (kind, number, payload), the one shape both ends send."""
    kind, number, payload = pickle.loads(data)  # noqa: S301  both ends are this program
    return str(kind), int(number), payload


def cpu_count() -> int:
    """CPUs this process may run on (systemd's CPUAffinity included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ReaderProcess:
    """The daemon's handle on one reader process: send a submission, await its outcome."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[Outcome]] = {}
        self._ids = itertools.count(1)
        self._replies: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._silence = STUCK_MARGIN + DEFAULT_BUSY_TIMEOUT
        """Seconds without a word, while work waits, after which the process is stuck."""
        self.ready = False
        self.closing = False
        self.answered = 0
        """Submissions the process has answered."""
        self._heard = time.monotonic()
        self.gone = asyncio.Event()
        """Set when the process has ended (or never started)."""

    @property
    def pid(self) -> int | None:
        """The process id, while it runs."""
        return None if self._proc is None else self._proc.pid

    @property
    def pending(self) -> int:
        """Submissions sent and not answered yet."""
        return len(self._pending)

    async def start(self) -> None:
        """Start the process and wait until it has opened the queue; ReaderGoneError if not."""
        ours, theirs = socket.socketpair()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mail2sms.reader_process",
                str(theirs.fileno()),
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
            )
        except OSError as exc:
            ours.close()
            self.gone.set()
            raise ReaderGoneError(f"cannot start the reader process: {exc}") from exc
        finally:
            theirs.close()
        try:
            stream, self._writer = await asyncio.open_unix_connection(sock=ours)
            self._writer.write(_frame(("settings", 0, self._settings)))
            async with asyncio.timeout(START_TIMEOUT):
                first = await _receive(stream)
        except BaseException as exc:  # a timeout, a socket error, or our own cancellation
            await self._end(kill=True)
            if isinstance(exc, Exception):
                raise ReaderGoneError(f"the reader process did not start: {exc!r}") from exc
            raise
        if first is None or first[0] != "ready":
            await self._end(kill=True)
            raise ReaderGoneError("the reader process did not start (see its log lines above)")
        self.ready = True
        self._replies = asyncio.create_task(self._read_replies(stream), name="reader-replies")
        self._watchdog = asyncio.create_task(self._watch(), name="reader-watchdog")
        log.info("reader_process_started", pid=self.pid)

    async def read(self, submission: Submission, policy: Policy) -> Outcome:
        """The outcome from the process; ReaderGoneError if it could not be sent there.

        A process that has said nothing for as long as reading one message and one commit
        may take, while work waits, is stuck: ``_watch`` stops it (``reader_process_stuck``)
        and its clients get 451. A busy one that keeps answering is waited for. (One
        watchdog, not a timer per message: this runs on the event loop for every mail.)
        """
        writer = self._writer
        if not self.ready or self.closing or writer is None:
            raise ReaderGoneError("the reader process is not running")
        number = next(self._ids)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        if not self._pending:  # silence counts from the first work waiting, not the last answer
            self._heard = time.monotonic()
        self._pending[number] = future
        self._silence = policy.parse_timeout + DEFAULT_BUSY_TIMEOUT + STUCK_MARGIN
        try:
            writer.write(_frame(("read", number, submission)))
            await writer.drain()
            return await future
        except ConnectionError:
            return Outcome(TEMPORARY_ERROR)
        finally:
            self._pending.pop(number, None)

    async def _watch(self) -> None:
        """Stop a process that has answered nothing for ``_silence`` seconds while work waits."""
        while not self.closing:
            await asyncio.sleep(self._silence / 4)
            if self._pending and time.monotonic() - self._heard >= self._silence:
                log.error("reader_process_stuck", pid=self.pid, waiting=len(self._pending))
                await self._end(kill=True)
                return

    def reload(self, settings: Settings) -> None:
        """Send new settings: submissions sent from now on are read under them."""
        self._settings = settings
        if self._writer is not None and not self.closing:
            self._writer.write(_frame(("settings", 0, settings)))

    async def _read_replies(self, stream: asyncio.StreamReader) -> None:
        while (frame := await _receive(stream)) is not None:
            self._heard = time.monotonic()
            _kind, number, outcome = frame
            future = self._pending.get(number)
            if future is not None and not future.done() and isinstance(outcome, Outcome):
                self.answered += 1
                future.set_result(outcome)
        # The end of the stream: the process has exited (or closed its end).
        if not self.closing:
            log.error("reader_process_exited", pid=self.pid, unanswered=len(self._pending))
        await self._end(kill=False)

    async def close(self, grace: float) -> None:
        """Let the process answer what it has, then end; kill it after ``grace`` seconds."""
        if self.closing:
            await self.gone.wait()
            return
        self.closing = True
        if self._writer is not None and self._writer.can_write_eof():
            # our sending side only: it answers what it has (read on), then exits
            with contextlib.suppress(OSError):
                self._writer.write_eof()
        if self._proc is not None:
            try:
                async with asyncio.timeout(grace):
                    await self._proc.wait()
            except TimeoutError:
                log.warning("reader_process_killed", pid=self.pid)
        await self._end(kill=True)

    async def _end(self, *, kill: bool) -> None:
        """Forget the process: unanswered submissions get 451, the process is reaped."""
        self.ready = False
        self.closing = True
        if kill and self._replies is not None and self._replies is not asyncio.current_task():
            self._replies.cancel()
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_result(Outcome(TEMPORARY_ERROR))
        if self._writer is not None:
            self._writer.close()
        proc = self._proc
        if proc is not None:
            if kill and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await proc.wait()
        self.gone.set()


class SpillReader:
    """The daemon's reader for ``smtp.reader`` "auto" and "process".

    Reads in threads (``LocalReader``) until a reader process is ready, then there; falls
    back to threads at once if that process goes away.
    """

    def __init__(
        self,
        local: LocalReader,
        settings: Settings,
        *,
        mode: ReaderMode,
        busy: int = BUSY_READS,
        idle_stop: float = IDLE_STOP,
    ) -> None:
        self.local = local
        self.mode = mode
        self.busy = busy
        self.idle_stop = idle_stop
        self._settings = settings
        self.process: ReaderProcess | None = None
        self._starting: asyncio.Task[None] | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self._last_used = time.monotonic()
        self._not_before = 0.0
        self._closed = False

    async def read(self, submission: Submission, policy: Policy) -> Outcome:
        """In the reader process when it runs, else in a thread (and maybe start it)."""
        process = self.process
        if process is not None and process.ready:
            self._last_used = time.monotonic()
            try:
                return await process.read(submission, policy)
            except ReaderGoneError:
                pass
        if self.mode == "process" or self.local.reading + 1 >= self.busy:
            self.start_soon()
        return await self.local.read(submission, policy)

    def start_soon(self) -> None:
        """Start a reader process in the background unless one runs or is starting."""
        if self._closed or self.mode == "thread" or time.monotonic() < self._not_before:
            return
        if self._starting is not None or (self.process is not None and not self.process.closing):
            return
        self._starting = asyncio.create_task(self._start(), name="reader-start")

    async def _start(self) -> None:
        process = ReaderProcess(self._settings)
        try:
            await process.start()
        except ReaderGoneError as exc:  # start() killed what it had started
            log.error(  # noqa: TRY400  the reason is in the message
                "reader_process_failed", error=str(exc), retry_in_s=RESTART_AFTER
            )
            self._not_before = time.monotonic() + RESTART_AFTER
            return
        finally:
            self._starting = None
        if self._closed:
            await process.close(5.0)
            return
        self.process = process
        self._last_used = time.monotonic()
        if self._idle_task is None:
            self._idle_task = asyncio.create_task(self._watch(), name="reader-watch")

    async def _watch(self) -> None:
        """Notice a process that died (wait before the next) and, in "auto", idleness."""
        while not self._closed:
            process = self.process
            if process is None:
                break
            try:
                async with asyncio.timeout(max(1.0, self.idle_stop / 4)):
                    await process.gone.wait()
            except TimeoutError:
                idle = time.monotonic() - self._last_used
                if self.mode == "auto" and idle >= self.idle_stop and not process.pending:
                    log.info("reader_process_stopping", idle_s=round(idle))
                    self.process = None
                    await process.close(10.0)
                continue
            if self.process is process:  # it ended by itself
                self.process = None
                self._not_before = time.monotonic() + RESTART_AFTER
        self._idle_task = None

    def reload(self, settings: Settings) -> None:
        """New settings for the running process and those started later (not a new mode)."""
        self._settings = settings
        if self.process is not None:
            self.process.reload(settings)
        self._not_before = 0.0

    async def close(self, grace: float) -> None:
        """End the reader process (after it answered what it has) and the background tasks."""
        self._closed = True
        if self._starting is not None:  # its process is killed (ReaderProcess.start)
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting
        if self.process is not None:
            await self.process.close(grace)
            self.process = None
        watcher = self._idle_task
        if watcher is not None:  # it may be stopping an idle process: let it finish
            try:
                async with asyncio.timeout(grace + 15):
                    await watcher
            except TimeoutError:
                watcher.cancel()


def reader_for(local: LocalReader, settings: Settings) -> LocalReader | SpillReader:
    """The reader ``smtp.reader`` asks for.

    "auto" is "thread" on one CPU, and whenever ``senders.verify`` makes DNS lookups: the
    reader process reads one message at a time, so a slow lookup would hold up the rest.
    """
    mode: ReaderMode = settings.smtp.reader
    if mode == "thread" or (
        mode == "auto" and (cpu_count() < 2 or settings.senders.verify != "none")  # noqa: PLR2004
    ):
        return local
    return SpillReader(local, settings, mode=mode)


# ---- the reader process itself -----------------------------------------------------------


class _Frames:
    """Frames off the daemon's socket: those already here, and more when it is readable."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.open = True
        """False once the daemon closed its end: what is here is all there is."""
        self._buffer = bytearray()

    def next(self) -> tuple[str, int, object] | None:
        """The next frame, waiting for it; None at the end."""
        while (frame := self.take()) is None:
            if not self.open:
                return None
            self.fill()
        return frame

    def fill(self) -> None:
        """Receive what the socket has (waiting until it has something)."""
        data = self.sock.recv(1 << 16)
        if data:
            self._buffer += data
        else:
            self.open = False

    def take(self) -> tuple[str, int, object] | None:
        """A whole frame that is here already, or None."""
        if len(self._buffer) < _HEADER.size:
            return None
        (size,) = _HEADER.unpack_from(self._buffer)
        end = _HEADER.size + size
        if len(self._buffer) < end:
            return None
        frame = _unframe(self._buffer[_HEADER.size : end])
        del self._buffer[:end]
        return frame


class _ParseTimeoutError(BaseException):
    """Raised by SIGALRM inside a read that ran over ``parse_timeout``.

    Not an Exception, so the reader's own ``except Exception`` does not take it for a
    parser failure.
    """


def _on_alarm(_signum: int, _frame: object) -> None:
    raise _ParseTimeoutError


def _read_within(submission: Submission, policy: Policy) -> Built | Outcome:
    """``read_submission``, stopped after ``policy.parse_timeout`` (554, as in a thread).

    Here the read really stops: one thread, so the alarm interrupts it.
    """
    try:
        signal.setitimer(signal.ITIMER_REAL, policy.parse_timeout)
        try:
            return read_submission(submission, policy)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _ParseTimeoutError:  # also if it fired just as the read ended: one-shot
        log.warning("smtp_parse_timeout", size=len(submission.raw), peer=submission.peer)
        reply = PARSE_TOO_SLOW.format(seconds=f"{policy.parse_timeout:g}")
        return refused_outcome("DATA", reply, submission.peer)


Read = tuple[int, Submission, Built]
"""A message read and checked, waiting for its group: (frame number, submission, built)."""


@dataclass
class _Group:
    """A staged group on its way to disk, and the answers to send once it is there."""

    members: list[Read]
    answers: bytes
    """Every member's answer, framed."""
    notes: list[Callable[[], object]]
    """Every member's log line, written once the commit returned."""
    commit: Callable[[], None]
    failed: bool = False


def _stage(queue: Queue, reads: list[Read]) -> _Group | bytes:
    """Write a group in one open transaction.

    The group, to commit; or, if SQLite gave up the transaction, every member's answer
    (451, logged) to send at once.
    """
    items = [(built.message, built.since, built.quota) for _, _, built in reads]
    try:
        staged = StagedGroup(queue, items)
    except Exception as exc:  # noqa: BLE001  none is stored: 451 via stored() (QueueError or a bug, logged)
        return _none_stored(reads, exc)
    judgements = [
        judged(built, result, submission)
        for (_, submission, built), result in zip(reads, staged.results, strict=True)
    ]
    return _Group(
        reads,
        _answers((n, outcome) for (n, _, _), (outcome, _) in zip(reads, judgements, strict=True)),
        [note for _, note in judgements],
        staged.commit,
    )


def _answers(outcomes: Iterable[tuple[int, Outcome]]) -> bytes:
    return b"".join(_frame(("done", number, outcome)) for number, outcome in outcomes)


def _none_stored(reads: list[Read], error: Exception) -> bytes:
    """Every member's answer when its group was not stored (451 via ``stored``, logged)."""
    return _answers((n, stored(built, error, sub)) for n, sub, built in reads)


def _commit(group: _Group) -> bytes:
    """Commit a staged group; its members' answers (451 for all if the commit failed)."""
    try:
        group.commit()
    except Exception as exc:  # noqa: BLE001  none is stored: 451 via stored() (QueueError or a bug, logged)
        group.failed = True
        return _none_stored(group.members, exc)
    return group.answers


class _Committer:
    """Runs each group's COMMIT (its fsync) on a thread of its own, then answers the group.

    The reading thread writes a group (one transaction) and hands over only the COMMIT,
    which runs without the GIL, and reads the next messages meanwhile; it writes the next
    group once this one is done (``wake`` turns readable). An earlier version ran the whole
    enqueue on this thread, and every SQLite step then waited for the GIL from the busy
    reading thread (a group of five took 5 ms); one before that read and committed by
    turns, which kept every client in step.
    """

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self._send = send
        self._groups: SimpleQueue[_Group | None] = SimpleQueue()
        self._done: SimpleQueue[_Group] = SimpleQueue()
        self.busy = False
        """A group is being committed: the queue is not to be used until it is done."""
        self.wake, self._wake_w = socket.socketpair()
        """Readable when a group is done (``finished``)."""
        self.wake.setblocking(False)  # noqa: FBT003  the socket API
        self._thread = threading.Thread(target=self._run, name="reader-commit", daemon=True)
        self._thread.start()

    def commit(self, group: _Group) -> None:
        """Commit this group and answer its members; ``finished`` returns it after."""
        self.busy = True
        self._groups.put(group)

    def finished(self) -> _Group | None:
        """The group committed and answered since the last call, if any."""
        with contextlib.suppress(BlockingIOError):
            self.wake.recv(64)  # (a wake-up may come after its group was taken: drop it)
        if not self.busy:
            return None
        try:
            group = self._done.get_nowait()
        except Empty:
            return None
        self.busy = False
        return group

    def close(self) -> None:
        """Finish the group in hand, then end the thread."""
        self._groups.put(None)
        self._thread.join()
        self.wake.close()
        self._wake_w.close()

    def _run(self) -> None:
        # The reading thread's parse time limit (SIGALRM) is not for this one: it would
        # only interrupt a wait in SQLite.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        while (group := self._groups.get()) is not None:
            try:
                answers = _commit(group)
            except Exception:  # a bug: they send again (one committed is caught as a duplicate)
                log.exception("reader_process_commit_failed")
                group.failed = True
                answers = _answers((n, Outcome(TEMPORARY_ERROR)) for n, _, _ in group.members)
            with contextlib.suppress(OSError):  # the daemon is gone: nobody waits for these
                self._send(answers)
            self._done.put(group)
            with contextlib.suppress(OSError):
                self._wake_w.send(b"!")


def _serve(sock: socket.socket) -> None:
    """Read and check each message as it comes, and commit them a group at a time.

    Reading stays on the main thread, where SIGALRM can stop a read at ``parse_timeout``.
    A refusal is answered at once; what is read waits for the next group, written as soon
    as the last one is on disk (``_Committer``).
    """
    signal.signal(signal.SIGALRM, _on_alarm)
    # The commit thread needs the GIL to answer a group once its fsync returned; at the
    # default 5 ms a busy reading thread would keep it that long (bench/gil_convoy.py).
    sys.setswitchinterval(SWITCH_INTERVAL)
    sock.settimeout(None)
    frames = _Frames(sock)
    first = frames.next()
    if first is None or not isinstance(first[2], Settings):
        return
    policy = _apply(first[2])
    sending = threading.Lock()

    def send(data: bytes) -> None:
        with sending:
            sock.sendall(data)

    with Queue(first[2].queue.path, any_thread=True, short_lock_waits=True) as queue:
        committer = _Committer(send)
        try:
            send(_frame(("ready", 0, None)))
            _Reader(frames, queue, committer, policy, send).run()
        finally:
            committer.close()


class _Reader:
    """The reading thread: reads each message as it comes, hands groups to the committer."""

    def __init__(
        self,
        frames: _Frames,
        queue: Queue,
        committer: _Committer,
        policy: Policy,
        send: Callable[[bytes], None],
    ) -> None:
        self._frames = frames
        self._queue = queue
        self._committer = committer
        self._policy = policy
        self._send = send
        self._reads: list[Read] = []
        self._fill_until = 0.0

    def run(self) -> None:
        """Until the daemon closed its end and everything it sent is answered."""
        frames = self._frames
        with selectors.DefaultSelector() as waiting:
            waiting.register(frames.sock, selectors.EVENT_READ)
            waiting.register(self._committer.wake, selectors.EVENT_READ)
            while True:
                frame = frames.take()
                if frame is not None and self._filling():
                    self._handle(*frame)  # what is here already joins the next group
                    continue
                self._flush()
                if frame is not None:
                    self._handle(*frame)
                    continue
                if not frames.open and not self._reads and not self._committer.busy:
                    return
                # nothing here to read: wait for more mail, or for the group in hand
                for key, _ in waiting.select():
                    if key.fileobj is frames.sock:
                        frames.fill()
                        if not frames.open:
                            waiting.unregister(frames.sock)

    def _filling(self) -> bool:
        """Whether a message already received may be read before the next group is written."""
        return len(self._reads) < GROUP_FILL and (
            not self._reads or time.monotonic() < self._fill_until
        )

    def _flush(self) -> None:
        """Log a group that is on disk; hand over the next one if the committer is free."""
        done = self._committer.finished()
        if done is not None and not done.failed:
            with together():
                for note in done.notes:
                    note()
        if self._reads and not self._committer.busy:
            group, self._reads = self._reads[:MAX_GROUP], self._reads[MAX_GROUP:]
            staged = _stage(self._queue, group)
            if isinstance(staged, _Group):
                self._committer.commit(staged)
            else:
                self._send(staged)

    def _handle(self, kind: str, number: int, payload: object) -> None:
        if kind == "settings" and isinstance(payload, Settings):
            self._policy = _apply(payload)
        elif kind == "read" and isinstance(payload, Submission):
            started = time.monotonic()
            built = _read_within(payload, self._policy)
            if isinstance(built, Outcome):
                self._send(_answers([(number, built)]))
            else:
                if not self._reads:  # the group's clock starts with its first read
                    self._fill_until = started + GROUP_FILL_TIME
                self._reads.append((number, payload, built))


def _apply(settings: Settings) -> Policy:
    """Take new settings: the log's, and the policy messages are read under from now on."""
    from mail2sms import log as logging_setup  # noqa: PLC0415

    logging_setup.configure(show_numbers=settings.log.show_numbers, level=settings.log.level)
    return Policy.from_settings(settings)


def main() -> int:
    """``python -m mail2sms.reader_process FD``: serve the daemon on socket FD until it closes."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # the daemon decides when this ends
    with socket.socket(fileno=int(sys.argv[1])) as sock:
        _serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
