"""Configuration: one TOML file plus ``MAIL2SMS_<SECTION>__<KEY>`` environment overrides.

Validated once, at start-up or by ``check-config``; every problem is reported with its key
path so an administrator can fix them all in one go. Nothing here exits: ``load_config``
raises ``ConfigError`` and the CLI decides what to print and which code to exit with.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Self

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from mail2sms.addressing import parse_numbers
from mail2sms.errors import ConfigError, MailRefusedError
from mail2sms.limits import Destinations, Quota
from mail2sms.mail_address import ascii_domain, ascii_hostname, plain_address
from mail2sms.passwords import parse_hash
from mail2sms.tls import load_context

ENV_PREFIX = "MAIL2SMS_"
# file names under $CREDENTIALS_DIRECTORY (systemd LoadCredential=), by provider key
CREDENTIAL_TOKEN = "provider_token"  # noqa: S105  a file name
CREDENTIAL_APPLICATION_KEY = "provider_application_key"
_CREDENTIAL_FILES = {"token": CREDENTIAL_TOKEN, "application_key": CREDENTIAL_APPLICATION_KEY}

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> float:
    """Read seconds from a number or a string such as ``"90s"``, ``"5m"``, ``"1h30m"``."""
    if isinstance(value, bool):
        raise ValueError(  # noqa: TRY004  pydantic turns only ValueError into a field error
            "a duration is a number of seconds or a string such as '30s'"
        )
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            parts = _DURATION_PART.findall(text)
            if not parts or _DURATION_PART.sub("", text).strip():
                raise ValueError(
                    f"{value!r} is not a duration: use seconds or e.g. '30s', '5m', '2h', '1d'"
                )
            seconds = sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in parts)
    else:
        raise ValueError(  # noqa: TRY004  pydantic turns only ValueError into a field error
            "a duration is a number of seconds or a string such as '30s'"
        )
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class HostPort(NamedTuple):
    """A listening or connecting address; ``str()`` gives the ``host:port`` form back."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_host_port(value: object) -> HostPort:
    """Read ``host:port`` (``[v6]:port`` for IPv6); port 0 means any free port."""
    if isinstance(value, HostPort):
        return value
    if not isinstance(value, str):
        raise ValueError(  # noqa: TRY004  pydantic turns only ValueError into a field error
            "expected 'host:port', e.g. '127.0.0.1:2525'"
        )
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", value.strip())
    if not match:
        raise ValueError(f"{value!r} is not 'host:port', e.g. '127.0.0.1:2525' or '[::1]:2525'")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:  # noqa: PLR2004  the TCP port range
        raise ValueError(f"port {port} is out of range (0-65535)")
    return HostPort(host, port)


# NoDecode: the environment gives "host:port" as written, not JSON for a tuple.
ListenAddress = Annotated[HostPort, NoDecode, BeforeValidator(parse_host_port)]


def _optional_host_port(value: object) -> HostPort | None:
    if value in (None, ""):
        return None
    return parse_host_port(value)


RelayAddress = Annotated[HostPort | None, NoDecode, BeforeValidator(_optional_host_port)]


def _normalise_email(value: str) -> str:
    """An allowlist or gateway address: any valid local part, the domain in ASCII, lower case.

    email-validator refuses special-use domains (.local, .internal) even without
    deliverability checks, so it checks the local part and mail_address the domain.
    """
    local, at, domain = value.strip().rpartition("@")
    if not at:
        raise ValueError(f"{value!r} is not an email address: it needs an @-sign")
    try:
        checked = validate_email(f"{local}@example.com", check_deliverability=False)
        domain = ascii_domain(domain)
    except (EmailNotValidError, ValueError) as exc:
        raise ValueError(f"{value!r} is not an email address: {exc}") from None
    return f"{checked.local_part}@{domain}".lower()


def _normalise_allow(value: list[str]) -> list[str]:
    """Allowlist entries: exact addresses, or ``@domain`` with the domain in ASCII."""
    return [
        "@" + ascii_domain(item.strip()[1:]).lower()
        if item.strip().startswith("@")
        else _normalise_email(item)
        for item in value
    ]


class Section(BaseModel):
    """A config section: unknown keys are errors, so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SmtpUser(Section):
    """One ``[[smtp.users]]`` entry: who may log in (AUTH), and as which senders."""

    name: str
    password_hash: SecretStr
    """Made by ``mail2sms hash-password``; never the password itself."""
    allow: list[str] = Field(default_factory=list)
    """Addresses (or ``@domain``) this user may send as; empty: any."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[^\s\x00-\x1f\x7f]{1,256}", value):
            raise ValueError(f"{value!r} is not a user name: one word, no spaces")
        return value

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, value: SecretStr) -> SecretStr:
        parse_hash(value.get_secret_value())  # its ValueError never quotes the value
        return SecretStr(value.get_secret_value().strip())

    @field_validator("allow")
    @classmethod
    def _allow(cls, value: list[str]) -> list[str]:
        return _normalise_allow(value)


class SmtpConfig(Section):
    """The SMTP listener."""

    listen: ListenAddress = HostPort("127.0.0.1", 2525)
    hostname: str = Field(default_factory=socket.getfqdn, validate_default=True)
    max_message_size: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_received: int = Field(default=30, ge=1, le=1000)
    accept_auto_generated: bool = True
    duplicate_window: Duration = Field(default=600.0, ge=0)
    """The same Message-ID from the same sender within this is answered 250, not resent."""
    tls_cert: Path | None = None
    """PEM certificate chain: STARTTLS is offered when set (with ``tls_key``)."""
    tls_key: Path | None = None
    tls_listen: RelayAddress = None
    """An implicit-TLS listener (port 465 style), besides ``listen``."""
    users: list[SmtpUser] = Field(default_factory=list)
    max_connections: int = Field(default=200, ge=1)
    """Sessions at once; beyond it a new client gets 421 (bounds memory and threads)."""
    max_connections_per_client: int = Field(default=20, ge=1)
    """Sessions at once from one IP address, so one client cannot take them all."""
    timeout: Duration = Field(default=300.0, gt=0)
    """Idle time allowed before each command (RFC 5321 section 4.5.3.2: 5 minutes)."""
    data_timeout: Duration = Field(default=600.0, gt=0)
    """Time allowed for the whole message after 354 (RFC 5321's DATA termination: 10m)."""
    max_commands: int = Field(default=100, ge=1)
    """NOOP/RSET/VRFY/HELP/EXPN and syntax errors per session between accepted messages."""
    reader: Literal["auto", "thread", "process"] = "auto"
    """Where mail is read and stored: threads, a second process, or the process when busy."""

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        # it names us in bounces (Reporting-MTA, Message-ID) and in the EHLO reply
        return ascii_hostname(value)

    @field_validator("tls_cert")
    @classmethod
    def _tls_cert(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                value.read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {value}: {exc.strerror}") from None
        return value

    @field_validator("tls_key")
    @classmethod
    def _tls_key(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """Loaded now, so a missing, unreadable or mismatched pair fails check-config."""
        cert = info.data.get("tls_cert")
        if value is not None and cert is not None:
            load_context(cert, value)
        return value

    @field_validator("users")
    @classmethod
    def _unique(cls, value: list[SmtpUser]) -> list[SmtpUser]:
        names = [user.name for user in value]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)}: user name listed more than once")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("smtp.tls_cert and smtp.tls_key are set together or not at all")
        if self.tls_listen is not None and self.tls_cert is None:
            raise ValueError("smtp.tls_listen needs smtp.tls_cert and smtp.tls_key")
        return self


def _check_sender_id(value: str) -> str:
    sender = value.strip()
    if re.fullmatch(r"\+?\d{3,15}", sender):
        return sender
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 .&-]{0,10}", sender) and not sender.isdigit():
        return sender
    raise ValueError(
        f"{value!r} is not a sender ID: use up to 11 letters/digits (e.g. 'MyBrand') "
        "or a phone number"
    )


TextSource = Literal["body", "subject", "subject+body"]


class AddressOptions(Section):
    """How mail to one gateway or alias address is sent, where it differs from the default."""

    otp: bool = False
    """Use the provider's priority route for one-time codes (DataFlows ``type: otp``)."""
    sender_id: str | None = None
    text: TextSource = "body"
    """Where the SMS text comes from (``body``: an empty body falls back to the subject)."""
    max_parts: int | None = Field(default=None, ge=1, le=30)

    @field_validator("sender_id")
    @classmethod
    def _sender_id(cls, value: str | None) -> str | None:
        return None if value is None else _check_sender_id(value)


_ALIAS_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_-]|\.(?!\.)){0,62}(?<!\.)")
_NUMBER_LIKE = re.compile(r"\+?[\d.\-]+")  # would capture mail to <number>@domain


class GatewayConfig(Section):
    """Which addresses are gateways and how their mail becomes SMS."""

    addresses: list[str] = Field(default_factory=list)
    domains: list[str] = Field(default_factory=list)
    default_region: str = "AU"
    sender_id: str = "mail2sms"
    max_parts: int = Field(default=6, ge=1, le=30)
    aliases: dict[str, list[str]] = Field(default_factory=dict)
    """``name = [numbers]``: mail to ``<name>@<gateway domain>`` goes to those numbers."""
    contact_lists: dict[str, str] = Field(default_factory=dict)
    """``name = "<uid>"``: mail to ``<name>@<gateway domain>`` goes to a DataFlows contact list."""
    options: dict[str, AddressOptions] = Field(default_factory=dict)
    """Per gateway or alias address: ``otp``, ``sender_id``."""

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        return [_normalise_email(a) for a in value]

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [ascii_hostname(d) for d in value]

    @field_validator("default_region")
    @classmethod
    def _region(cls, value: str) -> str:
        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not a known region (an ISO 3166 code such as 'AU')")
        return region

    @field_validator("sender_id")
    @classmethod
    def _sender_id(cls, value: str) -> str:
        return _check_sender_id(value)

    @model_validator(mode="after")
    def _something_to_accept(self) -> Self:
        if not self.addresses and not self.domains:
            raise ValueError(
                "set gateway.addresses and/or gateway.domains, or no mail can be accepted"
            )
        return self

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: dict[str, list[str]], info: ValidationInfo) -> dict[str, list[str]]:
        """Names that are not numbers; their numbers read now, with the default region."""
        region = info.data.get("default_region", "AU")
        aliases: dict[str, list[str]] = {}
        for name, numbers in value.items():
            key = name.strip().lower()
            if not _ALIAS_NAME.fullmatch(key) or _NUMBER_LIKE.fullmatch(key):
                raise ValueError(f"{name!r} is not an alias name (letters, e.g. 'oncall')")
            try:
                aliases[key] = list(parse_numbers(", ".join(numbers), region))
            except MailRefusedError as exc:
                raise ValueError(f"{name}: {exc.text}") from None
        if aliases and not info.data.get("domains"):
            raise ValueError("aliases need gateway.domains: mail goes to <name>@<domain>")
        domains = set(info.data.get("domains", []))
        taken = {
            a.partition("@")[0]
            for a in info.data.get("addresses", [])
            if a.partition("@")[2] in domains
        }
        clash = sorted(taken & set(aliases))
        if clash:
            raise ValueError(f"{', '.join(clash)}: already a gateway address at a gateway domain")
        return aliases

    @field_validator("contact_lists")
    @classmethod
    def _contact_lists(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        """Names like aliases (and not one of them); uids as DataFlows writes them."""
        lists: dict[str, str] = {}
        for name, uid in value.items():
            key = name.strip().lower()
            if not _ALIAS_NAME.fullmatch(key) or _NUMBER_LIKE.fullmatch(key):
                raise ValueError(f"{name!r} is not a list name (letters, e.g. 'managers')")
            if key in info.data.get("aliases", {}):
                raise ValueError(f"{name!r} is both an alias and a contact list")
            if not re.fullmatch(r"[A-Za-z0-9]{1,64}", uid.strip()):
                raise ValueError(
                    f"{name}: {uid!r} is not a contact list uid (e.g. '6065ac2f1a2b3')"
                )
            lists[key] = uid.strip()
        if lists and not info.data.get("domains"):
            raise ValueError("contact lists need gateway.domains: mail goes to <name>@<domain>")
        return lists

    @field_validator("options")
    @classmethod
    def _options(
        cls, value: dict[str, AddressOptions], info: ValidationInfo
    ) -> dict[str, AddressOptions]:
        """Options only for addresses the gateway accepts, so a typo is an error."""
        domains = info.data.get("domains", [])
        names = [*info.data.get("aliases", {}), *info.data.get("contact_lists", {})]
        known = set(info.data.get("addresses", [])) | {
            f"{name}@{domain}" for name in names for domain in domains
        }
        options = {_normalise_email(address): opts for address, opts in value.items()}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not a gateway or alias address")
        return options


class SendersConfig(Section):
    """Who may send: an exact address, or ``@domain`` for everyone at a domain."""

    allow: list[str] = Field(default_factory=list)
    require_auth: bool = False
    """Every client must log in (AUTH), except those in ``networks``."""
    networks: list[str] = Field(default_factory=list)
    """CIDRs whose clients may send without AUTH and without being on ``allow``."""
    verify: Literal["none", "dmarc"] = "none"
    """``dmarc``: an unauthenticated client's From domain must pass SPF or DKIM, aligned."""
    trusted_authserv_ids: list[str] = Field(default_factory=list)
    """Authentication-Results headers believed, by authserv-id (the upstream MTA's name)."""
    dns_servers: list[str] = Field(default_factory=list)
    """Resolvers for the checks (IP addresses); empty means /etc/resolv.conf."""
    dns_timeout: Duration = Field(default=5.0, gt=0, le=60)

    @field_validator("trusted_authserv_ids")
    @classmethod
    def _authserv_ids(cls, value: list[str]) -> list[str]:
        ids = [item.strip().lower() for item in value]
        if any(not re.fullmatch(r"[\x21-\x7e]+", item) or ";" in item for item in ids):
            raise ValueError("an authserv-id is one word, e.g. 'mx.example.com'")
        return ids

    @field_validator("dns_servers")
    @classmethod
    def _dns_servers(cls, value: list[str]) -> list[str]:
        servers = []
        for item in value:
            try:
                servers.append(str(ipaddress.ip_address(item.strip())))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address, e.g. '127.0.0.53'") from None
        return servers

    @field_validator("allow")
    @classmethod
    def _allow(cls, value: list[str]) -> list[str]:
        return _normalise_allow(value)

    @field_validator("networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        networks = []
        for item in value:
            try:
                networks.append(str(ipaddress.ip_network(item.strip())))
            except ValueError as exc:
                raise ValueError(
                    f"{item!r} is not a network: write it as a CIDR such as "
                    f"'192.168.10.0/24' ({exc})"
                ) from None
        return networks


ProviderKind = Literal["outbox", "dataflows", "messageflow", "textflow"]
HTTP_PROVIDERS: frozenset[str] = frozenset({"dataflows", "messageflow", "textflow"})


class ProviderConfig(Section):
    """The SMS provider and its credentials (``token`` is a secret: never printed)."""

    kind: ProviderKind = "outbox"
    path: Path = Path("var/outbox.jsonl")
    base_url: str | None = None
    token: SecretStr | None = None
    application_key: SecretStr | None = None
    """MessageFlow's second credential (the panel's "ApplicationKey"); a secret too."""
    timeout: Duration = 30.0

    @field_validator("token", "application_key")
    @classmethod
    def _credential(cls, value: SecretStr | None) -> SecretStr | None:
        """It goes into an HTTP header: printable ASCII only (never shown in the error)."""
        if value is None:
            return None
        secret = value.get_secret_value().strip()
        if not re.fullmatch(r"[\x21-\x7e]*", secret):
            raise ValueError(
                "contains spaces, line breaks or non-ASCII characters; "
                "a credential is one line of printable ASCII (check the file or variable)"
            )
        return SecretStr(secret)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = value.strip().rstrip("/")
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return url

    @model_validator(mode="after")
    def _token_for_http(self) -> Self:
        if self.kind in HTTP_PROVIDERS and (
            self.token is None or not self.token.get_secret_value().strip()
        ):
            raise ValueError(
                f"provider.token is required for kind '{self.kind}': set it, or "
                f"MAIL2SMS_PROVIDER__TOKEN, or $CREDENTIALS_DIRECTORY/{CREDENTIAL_TOKEN}"
            )
        if self.kind == "messageflow" and (
            self.application_key is None or not self.application_key.get_secret_value().strip()
        ):
            raise ValueError(
                "provider.application_key is required for kind 'messageflow' (the panel's "
                "ApplicationKey): set it, or MAIL2SMS_PROVIDER__APPLICATION_KEY, or "
                f"$CREDENTIALS_DIRECTORY/{CREDENTIAL_APPLICATION_KEY}"
            )
        return self


class ContentConfig(Section):
    """How mail text is shaped into SMS text."""

    normalize: bool = True
    """Map curly quotes, dashes, odd spaces… to GSM-7, so mostly-ASCII mail stays GSM-7."""
    strip_patterns: list[str] = Field(default_factory=list)
    """Regular expressions removed from the text wherever they match."""
    cut_after: list[str] = Field(default_factory=list)
    """Marker lines (e.g. ``$$``) after which everything is dropped."""
    on_too_long: Literal["reject", "truncate"] = "reject"

    @field_validator("strip_patterns")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return value

    @field_validator("cut_after")
    @classmethod
    def _markers(cls, value: list[str]) -> list[str]:
        markers = [m.strip() for m in value]
        if any(not m for m in markers):
            raise ValueError("an empty marker would cut every message")
        return markers


class LimitsConfig(Section):
    """Anti-pumping limits, checked before a message is queued (see mail2sms.limits).

    Counted in SMS recipients: one per destination number, one per contact list.
    """

    countries: list[str] = Field(default_factory=list)
    """ISO 3166 codes SMS may go to; empty means only the country of gateway.default_region."""
    max_recipients: int = Field(default=100, ge=1)
    """Numbers per message (after aliases and the Subject are read); also caps RCPT TO."""
    per_sender_per_hour: int = Field(default=200, ge=0)
    """SMS one sender (the SMTP AUTH user, else the envelope sender) may queue in an hour."""
    per_recipient_per_hour: int = Field(default=60, ge=0)
    per_day: int = Field(default=2000, ge=0)
    """SMS the whole gateway may queue in 24 hours; 0 turns a rate off."""

    @field_validator("countries")
    @classmethod
    def _countries(cls, value: list[str]) -> list[str]:
        countries: list[str] = []
        for code in value:
            region = code.strip().upper()
            if region not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(
                    f"{code!r} is not a country phonenumbers knows (an ISO 3166 code such as "
                    "'AU'); list every country SMS may go to"
                )
            countries.append(region)
        return list(dict.fromkeys(countries))

    def destinations(self, default_region: str) -> Destinations:
        """The destination rules, ``countries`` defaulting to ``default_region`` (one place)."""
        return Destinations(
            countries=tuple(self.countries or [default_region]),
            max_recipients=self.max_recipients,
        )

    def quota(self, sender_key: str) -> Quota:
        """The rates for one message from ``sender_key``."""
        return Quota(
            sender_key=sender_key,
            per_sender_per_hour=self.per_sender_per_hour,
            per_recipient_per_hour=self.per_recipient_per_hour,
            per_day=self.per_day,
        )


class MetricsConfig(Section):
    """Prometheus ``/metrics`` and ``/healthz``; off unless ``listen`` is set."""

    listen: RelayAddress = None


LogLevel = Literal["debug", "info", "warning", "error"]


class LogConfig(Section):
    """What the log shows: phone numbers are masked unless the administrator opts in."""

    show_numbers: bool = False
    """Log full phone numbers (``+61412345678``) instead of ``+614****5678``."""
    level: LogLevel = "info"

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class QueueConfig(Section):
    """Where the durable queue lives."""

    path: Path = Path("var/queue.sqlite3")
    retention: Duration = Field(default=7 * 86400.0, ge=0)
    """How long finished messages stay listable (``queue list --all``) before pruning."""


class DeliveryConfig(Section):
    """How hard and how often the workers try."""

    workers: int = Field(default=8, ge=1, le=256)
    retry_initial: Duration = 30.0
    retry_max: Duration = 900.0
    give_up_after: Duration = 2 * 86400.0
    shutdown_grace: Duration = 10.0

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.retry_initial <= 0:
            raise ValueError("delivery.retry_initial must be more than 0")
        if self.retry_max < self.retry_initial:
            raise ValueError("delivery.retry_max must be at least delivery.retry_initial")
        return self


class BounceConfig(Section):
    """Where delivery status notifications go; an empty relay means failures are only logged."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    relay: RelayAddress = None
    from_: str = Field(default="", alias="from")
    user: str = ""
    password: SecretStr | None = None
    starttls: Literal["auto", "always", "never"] = "auto"
    timeout: Duration = Field(default=30.0, gt=0)

    @field_validator("from_")
    @classmethod
    def _from(cls, value: str) -> str:
        return plain_address(value).lower() if value.strip() else ""

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        if bool(self.user) != (self.password is not None):
            raise ValueError("bounce.user and bounce.password are set together or not at all")
        return self

    def sender(self, hostname: str) -> str:
        """The bounce's From address: ``bounce.from`` or MAILER-DAEMON at our hostname."""
        return self.from_ or f"MAILER-DAEMON@{hostname}"


class Settings(BaseSettings):
    """The whole configuration; build it with ``load_config``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    smtp: SmtpConfig = Field(default_factory=SmtpConfig)
    gateway: GatewayConfig
    senders: SendersConfig = Field(default_factory=SendersConfig)
    provider: ProviderConfig = Field(default_factory=ProviderConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    bounce: BounceConfig = Field(default_factory=BounceConfig)
    content: ContentConfig = Field(default_factory=ContentConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],  # noqa: ARG003  the signature pydantic-settings calls
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, then the file's values (passed in as init data)."""
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _lists_need_dataflows(self) -> Self:
        if self.gateway.contact_lists and self.provider.kind != "dataflows":
            raise ValueError(
                "gateway.contact_lists are DataFlows contact lists: they need "
                f"provider.kind = 'dataflows' (not '{self.provider.kind}')"
            )
        return self

    @model_validator(mode="after")
    def _aliases_within_limits(self) -> Self:
        """An alias the limits would refuse is a mistake to fix now, not a 550 every time."""
        destinations = self.limits.destinations(self.gateway.default_region)
        for name, numbers in self.gateway.aliases.items():
            try:
                destinations.check_message(numbers)
            except MailRefusedError as exc:
                raise ValueError(f"gateway.aliases.{name}: {exc.text}") from None
        return self

    def warnings(self) -> list[str]:
        """Valid but probably unintended settings, for ``check-config`` and the start-up log."""
        notes = []
        if self.smtp.users and self.smtp.tls_cert is None:
            notes.append(
                "smtp.users are set but smtp.tls_cert is not: AUTH is offered only over TLS, "
                "so nobody can log in"
            )
        if self.senders.require_auth and not self.smtp.users:
            notes.append(
                "senders.require_auth is true but smtp.users is empty: only clients in "
                "senders.networks can send (530 5.7.0 for everyone else)"
            )
        others_refused = not (self.senders.require_auth or self.senders.networks or self.smtp.users)
        if not self.senders.allow and others_refused:
            notes.append("senders.allow is empty: every sender will be refused (550 5.7.1)")
        if (
            self.senders.verify == "none"
            and not self.senders.require_auth
            and not _private_host(self.smtp.listen.host)
        ):
            notes.append(
                f"smtp.listen {self.smtp.listen} may be reachable from the internet and "
                'senders.verify is "none": anyone can forge an allowed From line; '
                'set senders.verify = "dmarc"'
            )
        if self.senders.trusted_authserv_ids and self.senders.verify == "none":
            notes.append('senders.trusted_authserv_ids does nothing while senders.verify is "none"')
        if self.bounce.relay is None:
            notes.append("bounce.relay is empty: failed messages are logged, no bounce is sent")
        elif (
            self.bounce.password is not None
            and self.bounce.starttls != "always"
            and self.bounce.relay.host not in {"127.0.0.1", "::1", "localhost"}
        ):
            notes.append(
                "bounce.password goes to a remote relay without verified TLS: "
                'set bounce.starttls = "always"'
            )
        return notes


def _private_host(host: str) -> bool:
    """A loopback or private-range listen address (a LAN gateway); names count as public."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_private and not address.is_unspecified


def _credential(key: str) -> str | None:
    """Systemd's LoadCredential= puts a secret in a file only the service can read."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / _CREDENTIAL_FILES[key]
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError([f"provider.{key}: cannot read {path}: {exc.strerror}"]) from None


def _describe(error: Mapping[str, Any]) -> str:
    loc = ".".join(str(p) for p in error["loc"] if p != "from_") or "(top level)"
    if error["loc"] and error["loc"][-1] == "from_":
        loc = f"{loc}.from" if loc != "(top level)" else "from"
    kind = error["type"]
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"] and re.match(r"[a-z_]+\.[\w.-]+: ", message):
        return message  # a check across sections names its key itself
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    if kind == "missing":
        return f"{loc}: required key is missing"
    secret = any(word in loc for word in ("token", "password", "key"))
    if kind != "value_error" and not secret and "input" in error:
        shown = error["input"]
        if isinstance(shown, str | int | float | bool):
            message = f"{message} (got {shown!r})"
    return f"{loc}: {message}"


def load_config(path: Path) -> Settings:
    """Read, merge and validate the configuration; raise ConfigError listing every problem.

    Environment overrides (``MAIL2SMS_<SECTION>__<KEY>``) are read from ``os.environ``.
    """
    data = _read_toml(path)
    provider = data.setdefault("provider", {})
    for key in _CREDENTIAL_FILES:  # the file and the environment come first
        env_set = any(k.upper() == f"{ENV_PREFIX}PROVIDER__{key.upper()}" for k in os.environ)
        if key not in provider and not env_set:
            secret = _credential(key)
            if secret is not None:
                provider[key] = secret
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError([_describe(e) for e in exc.errors()]) from None
    except SettingsError as exc:
        # e.g. MAIL2SMS_SENDERS__ALLOW='a@b' where a JSON list is expected
        field = re.search(r'field "([^"]+)"', str(exc))
        where = field.group(1) if field else "?"
        raise ConfigError(
            [
                (
                    f"{where}: a {ENV_PREFIX}{where.upper()}__* environment variable is not "
                    "valid: lists and tables are written as JSON, e.g. '[\"a@example.com\"]'"
                )
            ]
        ) from None


def _read_toml(path: Path) -> dict[str, Any]:
    """The file's tables, or a ConfigError a person can act on (never a traceback)."""
    try:
        with path.open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a config file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    for section, value in data.items():
        if not isinstance(value, dict):
            raise ConfigError([f"{section}: expected a [{section}] table"])
    return data
