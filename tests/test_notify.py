"""sd_notify against a datagram socket the test binds: READY, WATCHDOG, STOPPING."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mail2sms.notify import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.0)  # non-blocking, for loop.sock_recv
    yield sock, path
    sock.close()


async def receive(sock: socket.socket, timeout: float = 5.0) -> str:
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout)
    return data.decode()


def test_outside_systemd_nothing_is_sent_and_nothing_fails():
    notifier = Notifier(environ={})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.notify("READY=1")  # no socket: a no-op


def test_an_abstract_socket_name_gets_its_nul_byte():
    assert (
        Notifier(environ={"NOTIFY_SOCKET": "@/org/systemd/notify"}).address
        == "\0/org/systemd/notify"
    )


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_the_watchdog_interval_is_half_of_watchdog_usec_for_this_process(environ, interval):
    assert Notifier(environ=environ).watchdog_interval == interval


def test_a_vanished_socket_is_logged_not_raised(tmp_path):
    Notifier(str(tmp_path / "gone.sock"), environ={}).notify("READY=1")


@pytest.mark.anyio
async def test_the_daemon_says_ready_pings_and_says_stopping(
    make_settings, start_app, notify_socket, monkeypatch
):
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    app = await start_app(make_settings())
    ready = await receive(sock)
    assert ready.splitlines() == ["READY=1", f"STATUS=listening on 127.0.0.1:{app.smtp_port}"]
    assert await receive(sock) == "WATCHDOG=1"
    assert await receive(sock) == "WATCHDOG=1"
    await app.stop()
    messages = [await receive(sock)]
    while not messages[-1].startswith("STOPPING=1"):
        messages.append(await receive(sock))
    assert messages[-1].splitlines() == ["STOPPING=1", "STATUS=stopping"]
