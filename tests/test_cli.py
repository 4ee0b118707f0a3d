"""The command line as an administrator uses it: exit codes, messages, no secrets."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from mail2sms import __version__
from mail2sms.cli import main
from mail2sms.models import NewMessage
from mail2sms.queue import Queue

ROOT = Path(__file__).resolve().parent.parent


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mail2sms {__version__}"


def test_python_dash_m_works():
    out = subprocess.run(
        [sys.executable, "-m", "mail2sms", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"mail2sms {__version__}"


def test_check_config_ok_on_the_example(capsys):
    assert main(["check-config", "-c", str(ROOT / "config.example.toml")]) == 0
    out = capsys.readouterr().out
    assert "OK" in out
    assert "outbox" in out
    assert "limits:   SMS to AU; 100 numbers a message; 200/h a sender" in out


def test_check_config_lists_problems_and_exits_78(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(
        "[gateway]\naddresses = ['sms@x.example']\ndefault_region = 'ZZ'\n"
        "[provider]\nkind = 'dataflows'\ntoken = 'hunter2-secret'\n[smtp]\nport = 25\n"
    )
    assert main(["-c", str(path), "check-config"]) == 78
    err = capsys.readouterr().err
    assert "gateway.default_region: 'ZZ' is not a known region" in err
    assert "smtp.port: unknown key" in err
    assert "hunter2-secret" not in err


def test_check_config_missing_file_is_one_line_and_78(tmp_path, capsys):
    assert main(["check-config", "-c", str(tmp_path / "missing.toml")]) == 78
    err = capsys.readouterr().err
    assert "missing.toml: no such file" in err
    assert "Traceback" not in err


def test_config_path_from_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAIL2SMS_CONFIG", str(tmp_path / "from-env.toml"))
    assert main(["check-config"]) == 78
    assert "from-env.toml" in capsys.readouterr().err


def test_check_config_does_not_print_the_token(tmp_path, monkeypatch, capsys):
    path = tmp_path / "ok.toml"
    path.write_text("[gateway]\naddresses = ['sms@x.example']\n[provider]\nkind = 'dataflows'\n")
    monkeypatch.setenv("MAIL2SMS_PROVIDER__TOKEN", "22|supersecret")
    assert main(["check-config", "-c", str(path)]) == 0
    captured = capsys.readouterr()
    assert "supersecret" not in captured.out + captured.err


def _config_with_queue(tmp_path: Path) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(
        f"[gateway]\naddresses = ['sms@x.example']\n[queue]\npath = '{tmp_path / 'q.sqlite3'}'\n"
    )
    return path


def test_queue_list_show_retry_delete(tmp_path, capsys):
    path = _config_with_queue(tmp_path)
    queue = Queue(tmp_path / "q.sqlite3")
    queue_id = queue.enqueue(
        NewMessage(
            envelope_from="alice@example.com",
            from_header="alice@example.com",
            subject="+61412345678",
            message_id="m1@example.com",
            recipients=("+61412345678",),
            text="Pump 2 failed",
            sender_id="Brand",
            received_at=time.time() - 120,
            size=100,
            headers="From: alice",
        )
    )
    queue.close()

    assert main(["queue", "list", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert queue_id in out
    assert "alice@example.com" in out
    assert "pending" in out

    assert main(["queue", "show", queue_id, "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Pump 2 failed" in out
    assert "+61412345678" in out

    assert main(["queue", "retry", queue_id, "-c", str(path)]) == 0
    assert "1 recipient" in capsys.readouterr().out

    assert main(["queue", "list", "--json", "-c", str(path)]) == 0
    assert f'"id": "{queue_id}"' in capsys.readouterr().out

    assert main(["queue", "delete", queue_id, "-c", str(path)]) == 0
    capsys.readouterr()
    assert main(["queue", "list", "-c", str(path)]) == 0
    assert "queue is empty" in capsys.readouterr().out


@pytest.mark.parametrize("action", ["show", "retry", "delete", "bounce"])
def test_queue_unknown_id_exits_1(tmp_path, capsys, action):
    path = _config_with_queue(tmp_path)
    Queue(tmp_path / "q.sqlite3").close()
    assert main(["queue", action, "NOSUCHID", "-c", str(path)]) == 1
    assert "no queued message with id 'NOSUCHID'" in capsys.readouterr().err


def test_serve_with_bad_config_exits_78(tmp_path, capsys):
    assert main(["serve", "-c", str(tmp_path / "none.toml")]) == 78


def _enqueue(tmp_path: Path, *numbers: str, age: float = 120) -> str:
    with Queue(tmp_path / "q.sqlite3") as queue:
        return queue.enqueue(
            NewMessage(
                envelope_from="alice@example.com",
                from_header="alice@example.com",
                subject=" ".join(numbers),
                message_id="m1@example.com",
                recipients=numbers,
                text="Pump 2 failed",
                sender_id="Brand",
                received_at=time.time() - age,
                size=100,
                headers="From: alice",
            )
        )


def test_queue_bounce_gives_up_and_shows_the_bounce_due(tmp_path, capsys):
    path = _config_with_queue(tmp_path)
    queue_id = _enqueue(tmp_path, "+61412345678", "+61498765432")
    assert main(["queue", "bounce", queue_id, "-c", str(path)]) == 0
    assert "gave up on 2 recipient(s)" in capsys.readouterr().out
    assert main(["queue", "list", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert queue_id in out
    assert "failed, bounce due" in out
    assert main(["queue", "show", queue_id, "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "status=5.0.0" in out
    assert "cancelled by the gateway's administrator" in out


def test_queue_retry_all_makes_everything_due(tmp_path, capsys):
    path = _config_with_queue(tmp_path)
    ids = [_enqueue(tmp_path, "+61412345678"), _enqueue(tmp_path, "+61498765432")]
    with Queue(tmp_path / "q.sqlite3") as queue:
        for job in queue.claim(now=time.time(), lease=60, limit=5):
            queue.mark_retry(
                job.queue_id, job.recipients, now=time.time(), at=time.time() + 3600, error="busy"
            )
    assert main(["queue", "retry", "--all", "-c", str(path)]) == 0
    assert "all messages: 2 recipient(s)" in capsys.readouterr().out
    with Queue(tmp_path / "q.sqlite3") as queue:
        assert {e.id for e in queue.entries()} == set(ids)
        assert (queue.next_due() or 0) <= time.time()


def test_queue_retry_needs_an_id_or_all(tmp_path, capsys):
    path = _config_with_queue(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["queue", "retry", "-c", str(path)])
    assert exited.value.code == 2
    assert "ID" in capsys.readouterr().err


def test_queue_commands_on_a_missing_queue_say_so_and_create_nothing(tmp_path, capsys):
    path = _config_with_queue(tmp_path)
    assert main(["queue", "list", "-c", str(path)]) == 1
    assert "no queue at" in capsys.readouterr().err
    assert not (tmp_path / "q.sqlite3").exists()


def _dataflows_config(tmp_path: Path, url: str, token: str) -> Path:
    path = tmp_path / "online.toml"
    path.write_text(
        "[gateway]\naddresses = ['sms@x.example']\n"
        f"[provider]\nkind = 'dataflows'\nbase_url = '{url}'\ntoken = '{token}'\ntimeout = 5\n"
    )
    return path


def test_check_config_online_shows_the_balance(tmp_path, capsys, fake_dataflows):
    fake_dataflows.balance = 1234
    path = _dataflows_config(tmp_path, fake_dataflows.url, fake_dataflows.token)
    assert main(["check-config", "--online", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "balance:  1,234 units" in out
    assert fake_dataflows.token not in out
    assert [r.path for r in fake_dataflows.requests] == ["/api/v3/profile/balance"]
    assert fake_dataflows.sent == []


def test_check_config_online_with_a_bad_token_names_the_problem_and_exits_78(
    tmp_path, capsys, fake_dataflows
):
    path = _dataflows_config(tmp_path, fake_dataflows.url, "22|notTheRightTokenAtAll0123456789")
    assert main(["check-config", "--online", "-c", str(path)]) == 78
    err = capsys.readouterr().err
    assert "provider refused the credentials" in err
    assert "Unauthenticated." in err
    assert "notTheRightTokenAtAll" not in err


def test_check_config_online_with_the_provider_unreachable_exits_75(tmp_path, capsys):
    import socket  # noqa: PLC0415

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = _dataflows_config(tmp_path, f"http://127.0.0.1:{port}", "22|someTokenValue0123456789abc")
    assert main(["check-config", "--online", "-c", str(path)]) == 75
    assert "cannot check the account now" in capsys.readouterr().err


def test_check_config_online_for_the_outbox_checks_the_file(tmp_path, capsys):
    path = tmp_path / "outbox.toml"
    path.write_text(
        "[gateway]\naddresses = ['sms@x.example']\n"
        f"[provider]\nkind = 'outbox'\npath = '{tmp_path / 'out' / 'outbox.jsonl'}'\n"
    )
    assert main(["check-config", "--online", "-c", str(path)]) == 0
    assert "is writable" in capsys.readouterr().out
