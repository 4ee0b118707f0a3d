"""SMS providers, listed explicitly: adding one means adding a module and a line here.

``PROVIDERS`` maps the ``provider.kind`` config value to its class; its keys are exactly
``mail2sms.config.ProviderKind`` (a test keeps the two in step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mail2sms.errors import ConfigError
from mail2sms.providers.base import HttpProvider, Provider, parse_retry_after
from mail2sms.providers.dataflows import DataFlowsProvider
from mail2sms.providers.messageflow import MessageFlowProvider
from mail2sms.providers.outbox import OutboxProvider
from mail2sms.providers.textflow import TextFlowProvider

if TYPE_CHECKING:
    import httpx

    from mail2sms.config import ProviderConfig

__all__ = [
    "PROVIDERS",
    "DataFlowsProvider",
    "HttpProvider",
    "MessageFlowProvider",
    "OutboxProvider",
    "Provider",
    "TextFlowProvider",
    "build_provider",
    "parse_retry_after",
]

PROVIDERS: dict[str, type[Provider]] = {
    "outbox": OutboxProvider,
    "dataflows": DataFlowsProvider,
    "messageflow": MessageFlowProvider,
    "textflow": TextFlowProvider,
}


def build_provider(config: ProviderConfig, client: httpx.AsyncClient) -> Provider:
    """Build the provider named by ``config.kind``, sharing the daemon's HTTP client."""
    try:
        kind = PROVIDERS[config.kind]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise ConfigError([f"provider.kind: unknown provider {config.kind!r} ({known})"]) from None
    return kind.from_config(config, client)
