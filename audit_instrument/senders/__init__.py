"""Senders: subscribers of ``signals.event_emitted`` that take events somewhere.

Each has ``send(event)``; hand them to :func:`audit_instrument.configure`.
"""

from __future__ import annotations

from .background import BackgroundSender
from .jsonl import JsonlSender, read_jsonl
from .logger import LoggingSender
from .memory import MemorySender

__all__ = ["BackgroundSender", "JsonlSender", "LoggingSender", "MemorySender", "read_jsonl"]
