"""Configuration: one TOML file plus ``MAIL2SMS_<SECTION>__<KEY>`` environment overrides.

Validated once, at start-up or by ``check-config``; every problem is reported with its key
path so an administrator can fix them all in one go. Nothing here exits: ``load_config``
raises ``ConfigError`` and the CLI decides what to print and which code to exit with.
"""

from __future__ import annotations

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
from mail2sms.mail_address import ascii_domain, ascii_hostname, plain_address

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


class Section(BaseModel):
    """A config section: unknown keys are errors, so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SmtpConfig(Section):
    """The SMTP listener."""

    listen: ListenAddress = HostPort("127.0.0.1", 2525)
    hostname: str = Field(default_factory=socket.getfqdn, validate_default=True)
    max_message_size: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_received: int = Field(default=30, ge=1, le=1000)
    accept_auto_generated: bool = True
    duplicate_window: Duration = Field(default=600.0, ge=0)
    """The same Message-ID from the same sender within this is answered 250, not resent."""
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

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        # it names us in bounces (Reporting-MTA, Message-ID) and in the EHLO reply
        return ascii_hostname(value)


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

    @field_validator("allow")
    @classmethod
    def _allow(cls, value: list[str]) -> list[str]:
        return [
            "@" + ascii_domain(item.strip()[1:]).lower()
            if item.strip().startswith("@")
            else _normalise_email(item)
            for item in value
        ]


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


class MetricsConfig(Section):
    """Prometheus ``/metrics`` and ``/healthz``; off unless ``listen`` is set."""

    listen: RelayAddress = None


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

    def warnings(self) -> list[str]:
        """Valid but probably unintended settings, for ``check-config`` and the start-up log."""
        notes = []
        if not self.senders.allow:
            notes.append("senders.allow is empty: every sender will be refused (550 5.7.1)")
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
