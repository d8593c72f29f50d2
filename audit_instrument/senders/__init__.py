"""Senders: subscribers of ``signals.event_emitted`` that take events somewhere.

Each has ``send(event)``; hand them to :func:`audit_instrument.configure`.
:class:`OTelLogSender` is imported on first use, so importing this package
does not import OpenTelemetry (an optional extra: ``audit_instrument[otel]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .background import BackgroundSender
from .jsonl import JsonlSender, read_jsonl
from .logger import LoggingSender
from .memory import MemorySender

if TYPE_CHECKING:
    from .otel import OTelLogSender


def __getattr__(name: str) -> Any:
    if name == "OTelLogSender":
        try:
            from .otel import OTelLogSender
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("opentelemetry"):
                raise
            raise ImportError(
                "OTelLogSender needs OpenTelemetry: pip install 'audit_instrument[otel]' "
                f"({exc.name} is missing)") from exc
        return OTelLogSender
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BackgroundSender", "JsonlSender", "LoggingSender", "MemorySender", "OTelLogSender",
    "read_jsonl",
]
