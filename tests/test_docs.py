"""The user documentation in docs/ stays true to the code.

Each test reads a list from the code (config models, ERROR_RULES, the argument parser,
reply constants, log calls) and checks the docs against it, so a change to one without
the other fails here. No sockets, no daemon: only files and imports.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from mail2sms import cli, smtp
from mail2sms.config import HostPort, Settings, load_config, parse_duration, parse_host_port
from mail2sms.errors import MailRefusedError
from mail2sms.providers import PROVIDERS
from mail2sms.providers import base as provider_base
from mail2sms.providers.dataflows import ERROR_RULES, SEND_PATH, DataFlowsProvider, Verdict

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGE = ROOT / "mail2sms"
CODE_SPAN = re.compile(r"`([^`]*)`")
TOML_BLOCK = re.compile(r"^```toml\n(.*?)^```", re.MULTILINE | re.DOTALL)
LOG_LEVELS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})
# A command as written in the docs: "mail2sms <command> ..." up to the end of the code span.
DOC_COMMAND = re.compile(
    r"(?<![\w.-])mail2sms\s+((?:serve|check-config|queue|--version)\b[^`\n#;&|>'\"]*)"
)


# ---- reading the docs ------------------------------------------------------------------


def doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def section(text: str, heading: str, level: int = 2) -> str:
    """The body under the heading ``heading`` (exact text), up to the next heading of its level."""
    marks = "#" * level
    match = re.search(
        rf"^{marks} {re.escape(heading)}\n(.*?)(?=^#{{1,{level}}} |\Z)",
        text,
        re.MULTILINE | re.DOTALL,
    )
    assert match is not None, f"no '{marks} {heading}' heading"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """Cells of every Markdown table row in ``text`` (header rows included, rules skipped).

    Cells are split on unescaped ``|``; ``\\|`` inside a cell (needed for regexes) becomes ``|``.
    """
    rows = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("|") or re.fullmatch(r"\|[\s|:-]+\|", stripped):
            continue
        inner = stripped[1:-1] if stripped.endswith("|") else stripped[1:]
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]
        rows.append(cells)
    return rows


def first_table(text: str) -> list[list[str]]:
    """The rows (without the header row) of the first table in ``text``."""
    block = re.search(r"^\|.*?(?=^[^|]|\Z)", text, re.MULTILINE | re.DOTALL)
    assert block is not None, "no table"
    rows = table_rows(block.group(0))
    assert len(rows) > 1, "the table has no rows"
    return rows[1:]


def code(cell: str) -> str | None:
    """The content of a cell that is exactly one code span, else None."""
    match = re.fullmatch(r"`([^`]*)`", cell.strip())
    return match.group(1) if match else None


def toml_value(literal: str) -> Any:
    return tomllib.loads(f"v = {literal}")["v"]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


# ---- reading the code ------------------------------------------------------------------


def config_sections() -> dict[str, type[BaseModel]]:
    sections = {}
    for name, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        sections[name] = model
    return sections


def config_keys(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """Keys as written in the file (``from``, not ``from_``)."""
    return {field.alias or name: field for name, field in model.model_fields.items()}


ALL_KEYS = [
    (section_name, key)
    for section_name, model in config_sections().items()
    for key in config_keys(model)
]


def documented_keys(section_name: str) -> dict[str, list[str]]:
    """Rows of the key tables under ``## `[section]``` in configuration.md, by key."""
    body = section(doc("configuration.md"), f"`[{section_name}]`")
    rows = {}
    for row in table_rows(body):
        key = code(row[0])
        if key is not None:
            rows[key] = row
    return rows


def subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every leaf command of the parser with its words, e.g. (("queue", "list"), parser)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.extend(subcommands(child, (*path, name)))
    return found or [(path, parser)]


def log_events() -> set[str]:
    """Every event name the package logs: ``log.<level>("event", ...)``."""
    events = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_LEVELS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                events.add(node.args[0].value)
    return events


def refusal_classes() -> list[type[MailRefusedError]]:
    found: list[type[MailRefusedError]] = []
    pending = list(MailRefusedError.__subclasses__())
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


# ---- configuration.md ------------------------------------------------------------------


@pytest.mark.parametrize(("section_name", "key"), ALL_KEYS)
def test_every_config_key_is_documented_in_its_section(section_name, key):
    rows = documented_keys(section_name)
    assert key in rows, f"{section_name}.{key} is missing from docs/configuration.md"
    _key, type_, _default_cell, meaning = rows[key]
    assert type_, f"{section_name}.{key}: no type"
    assert meaning, f"{section_name}.{key}: no meaning"


def test_no_documented_key_or_section_is_invented():
    sections = config_sections()
    headings = re.findall(r"^## `\[(\w+)\]`$", doc("configuration.md"), re.MULTILINE)
    assert sorted(headings) == sorted(sections)
    for name in headings:
        extra = set(documented_keys(name)) - set(config_keys(sections[name]))
        assert not extra, f"docs/configuration.md documents unknown keys in [{name}]: {extra}"


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()
    return field.default


def _same(written: Any, default: Any) -> bool:
    if default is None:
        return written == ""
    if isinstance(default, HostPort):
        return parse_host_port(written) == default
    if isinstance(default, bool):
        return written is default
    if isinstance(default, float):  # every float key is a duration
        return parse_duration(written) == default
    if isinstance(default, Path):
        return Path(written) == default
    return bool(written == default)


@pytest.mark.parametrize(("section_name", "key"), ALL_KEYS)
def test_documented_default_is_the_real_default(section_name, key):
    field = config_keys(config_sections()[section_name])[key]
    default = _default(field)
    cell = documented_keys(section_name)[key][2]
    literal = code(cell)
    computed = field.default_factory is not None and not isinstance(default, list)
    if literal is None:
        # Only a computed default (the host's name) or "none" may be described in words.
        assert computed or default is None, f"{section_name}.{key}: default {default!r} not shown"
        return
    assert _same(toml_value(literal), default), (
        f"{section_name}.{key}: docs say {literal}, the code says {default!r}"
    )


def test_toml_examples_are_valid_configurations(tmp_path, monkeypatch):
    blocks = TOML_BLOCK.findall(doc("configuration.md"))
    assert len(blocks) >= len(config_sections())
    for name in list(os.environ):
        if name.upper().startswith("MAIL2SMS_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)
    monkeypatch.setenv("MAIL2SMS_PROVIDER__TOKEN", "22|docsTestToken0123456789")
    for number, block in enumerate(blocks):
        data = tomllib.loads(block)
        merged = {"gateway": {"domains": ["sms.example.com"]}} | data
        bounce = merged.get("bounce", {})
        with monkeypatch.context() as env:
            if bounce.get("user") and "password" not in bounce:
                env.setenv("MAIL2SMS_BOUNCE__PASSWORD", "docs-test-password")
            path = tmp_path / f"example{number}.toml"
            path.write_text(_to_toml(merged), encoding="utf-8")
            load_config(path)  # raises ConfigError naming the problem


def _to_toml(data: dict[str, dict[str, Any]]) -> str:
    def literal(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(value, list):
            return "[" + ", ".join(literal(v) for v in value) + "]"
        return repr(value)

    lines = []
    for table, values in data.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {literal(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def test_duration_table_matches_the_parser():
    rows = first_table(section(doc("configuration.md"), "Durations"))
    assert len(rows) >= 5
    for written, seconds in rows:
        literal = code(written)
        assert literal is not None
        assert parse_duration(toml_value(literal)) == float(seconds), written


def test_environment_variables_in_the_docs_name_real_keys():
    keys = {(s, k.lower()) for s, k in ALL_KEYS}
    sections = set(config_sections())
    found = 0
    for name in ("configuration.md", "providers.md", "operations.md"):
        for sec, key in re.findall(r"MAIL2SMS_([A-Za-z]+)__([A-Za-z_]+)", doc(name)):
            found += 1
            assert sec.lower() in sections, f"{name}: MAIL2SMS_{sec}__{key}"
            assert (sec.lower(), key.lower()) in keys, f"{name}: MAIL2SMS_{sec}__{key}"
    assert found >= 5


# The keys DESIGN.md's config section lists for later work (kept here because DESIGN.md lives
# outside the repository): every one must now exist and be documented.
DESIGN_KEYS = {
    "smtp": ("tls_cert", "tls_key", "tls_listen", "max_connections", "users"),
    "senders": ("require_auth", "networks", "verify", "trusted_authserv_ids"),
    "gateway": ("aliases", "options"),
    "provider": ("application_key",),
    "bounce": ("relay", "user", "password", "starttls"),
    "content": ("normalize", "strip_patterns", "cut_after", "on_too_long"),
    "limits": (
        "countries",
        "max_recipients",
        "per_sender_per_hour",
        "per_recipient_per_hour",
        "per_day",
    ),
    "metrics": ("listen",),
    "log": ("show_numbers",),
}


def test_every_key_design_plans_exists_and_none_is_left_planned():
    sections = config_sections()
    for section_name, keys in DESIGN_KEYS.items():
        real = config_keys(sections[section_name])
        for key in keys:
            assert key in real, f"{section_name}.{key} (DESIGN.md) does not exist"
    assert "## Planned keys" not in doc("configuration.md"), "nothing is planned any more"


def test_the_token_sources_are_documented():
    text = section(doc("configuration.md"), "The provider token")
    assert "MAIL2SMS_PROVIDER__TOKEN" in text
    assert "$CREDENTIALS_DIRECTORY/provider_token" in text
    assert str(cli.EX_CONFIG) in section(doc("configuration.md"), "Checking a configuration")


# ---- providers.md ----------------------------------------------------------------------

VERDICT_ACTION = {
    Verdict.ACCOUNT: "provider_account_error",
    Verdict.RETRY: "retry",
    Verdict.RECIPIENT: "that number",
    Verdict.REFUSED: "whole message",
}


def test_classification_table_is_error_rules_row_by_row():
    rows = first_table(section(doc("providers.md"), "DataFlows error classification"))
    assert len(rows) == len(ERROR_RULES), "one table row per ERROR_RULES entry"
    for index, (rule, row) in enumerate(zip(ERROR_RULES, rows, strict=True), start=1):
        number, pattern, status, verdict, action, hint, why = row
        assert number == str(index)
        if rule.pattern is None:
            assert pattern == "(any)", f"row {index}"
        else:
            assert code(pattern) == rule.pattern, f"row {index}: {pattern} != {rule.pattern}"
        assert status == ("any" if rule.http_status is None else str(rule.http_status))
        assert verdict.lower() == rule.verdict.value, f"row {index}"
        assert VERDICT_ACTION[rule.verdict] in action, f"row {index}: {action}"
        assert hint == rule.hint, f"row {index}: hint {hint!r} != {rule.hint!r}"
        assert why, f"row {index}: say why"


def test_every_verdict_is_explained():
    text = section(doc("providers.md"), "DataFlows error classification")
    for verdict in Verdict:
        assert f"**{verdict.name}**" in text


def test_every_provider_has_a_section_and_its_facts():
    text = doc("providers.md")
    overview = {code(row[0]): row for row in first_table(text)}
    for kind, cls in PROVIDERS.items():
        assert f"## {kind}" in text.splitlines()
        assert kind in overview, f"{kind} missing from the overview table"
        assert str(cls.max_recipients) in overview[kind][2]
        if cls.docs_url.startswith("docs/"):
            file, _, anchor = cls.docs_url.removeprefix("docs/").partition("#")
            headings = re.findall(r"^#+ (.+)$", doc(file), re.MULTILINE)
            assert anchor in {slug(h) for h in headings}, cls.docs_url


def test_dataflows_request_facts():
    text = section(doc("providers.md"), "dataflows")
    assert SEND_PATH in text
    assert DataFlowsProvider.default_base_url in text
    assert f"up to {DataFlowsProvider.max_recipients} numbers" in text
    for field in ("recipient", "sender_id", "type", "message"):
        assert f"`{field}`" in text


def test_http_rules_name_every_retried_status():
    text = section(doc("providers.md"), "HTTP and transport rules (all HTTP providers)", 3)
    for status in sorted(provider_base._RETRY_STATUSES):
        assert str(status) in text
    assert "5xx" in text
    assert "Retry-After" in text
    assert provider_base.RETRY_AFTER_MAX == 3600.0
    assert "1 hour" in text


# ---- operations.md ---------------------------------------------------------------------


def test_every_cli_command_and_option_is_documented():
    text = doc("operations.md")
    leaves = subcommands(cli.build_parser())
    assert len(leaves) >= 6
    for words, parser in leaves:
        command = "mail2sms " + " ".join(words)
        assert command in text, f"{command} is not in docs/operations.md"
        for action in parser._actions:
            for option in action.option_strings:
                if option in {"-h", "--help", "-c", "--config"}:
                    continue
                pattern = rf"{re.escape(command)}\b[^`\n]*{re.escape(option)}\b"
                assert re.search(pattern, text), f"{command} {option} is not documented"


def _parses(words: list[str]) -> bool:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            cli.build_parser().parse_args(words)
        except SystemExit as exit_:
            return exit_.code in (0, None)
    return True


def test_documented_commands_exist_or_are_marked_planned():
    seen = 0
    for name in ("configuration.md", "providers.md", "operations.md"):
        for line in doc(name).splitlines():
            for match in DOC_COMMAND.finditer(line):
                seen += 1
                words = shlex.split(match.group(1).replace("[", " ").replace("]", " "))
                if not _parses(words):
                    assert re.search(r"planned|being added", line, re.IGNORECASE), (
                        f"{name}: 'mail2sms {match.group(1).strip()}' is not a command "
                        "and is not marked planned"
                    )
    assert seen >= 8


def test_exit_codes_are_documented():
    rows = first_table(section(doc("operations.md"), "Exit codes"))
    documented = {row[0] for row in rows}
    codes = {value for name, value in vars(cli).items() if name.startswith("EX_")}
    assert codes
    for value in codes | {2}:  # 2: argparse's usage error
        assert str(value) in documented, f"exit code {value} is not documented"


def test_smtp_reply_constants_are_documented():
    text = section(doc("operations.md"), "SMTP replies")
    constants = [
        value
        for name, value in vars(smtp).items()
        if name.isupper() and isinstance(value, str) and re.match(r"\d{3} \d\.\d+\.\d+ ", value)
    ]
    assert len(constants) >= 5
    for reply in constants:
        parts = re.split(r"\{\w+\}", reply)
        pattern = "<[^>]+>".join(re.escape(p) for p in parts)
        assert re.search(pattern, text), f"reply {reply!r} is not in the SMTP table"


def test_every_refusal_code_is_in_the_reply_table():
    text = section(doc("operations.md"), "SMTP replies")
    classes = refusal_classes()
    assert len(classes) >= 5
    for cls in classes:
        assert f"`{cls.code} {cls.status} " in text, f"{cls.__name__}: {cls.code} {cls.status}"


def test_every_log_event_is_documented():
    events = log_events()
    assert {"message_accepted", "sms_sent", "sms_failed", "provider_account_error"} <= events
    text = section(doc("operations.md"), "Logs")
    documented = {code(row[0]) for row in table_rows(text)}
    missing = events - documented
    assert not missing, f"log events not in docs/operations.md: {sorted(missing)}"
    invented = {e for e in documented if e and re.fullmatch(r"[a-z_]+", e)} - events
    assert not invented, f"docs/operations.md lists events the code never logs: {invented}"


# ---- all docs --------------------------------------------------------------------------


def test_links_between_docs_resolve():
    names = ("configuration.md", "providers.md", "operations.md", "performance.md")
    anchors = {
        name: {slug(h) for h in re.findall(r"^#+ (.+)$", doc(name), re.MULTILINE)} for name in names
    }
    checked = 0
    for name in names:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc(name)):
            if target.startswith(("http://", "https://")):
                continue
            if target.endswith(".png"):  # a figure: the file must be there
                assert (DOCS / target).is_file(), f"{name}: missing image {target}"
                continue
            file, _, anchor = target.partition("#")
            file = file or name
            assert file in anchors, f"{name}: link to missing {target}"
            if anchor:
                assert anchor in anchors[file], f"{name}: no heading for {target}"
            checked += 1
    assert checked >= 5


def test_messageflow_classification_table_has_a_row_per_rule():
    from mail2sms.providers import messageflow  # noqa: PLC0415

    text = section(doc("providers.md"), "MessageFlow error classification", 3)
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == len(messageflow.ERROR_RULES)
    for row, rule in zip(rows, messageflow.ERROR_RULES, strict=True):
        assert rule.verdict.name in row
        if rule.http_status is not None:
            assert f"| {rule.http_status} |" in row
