"""audit_instrument: turn an application's notable actions into audit-log events.

>>> from audit_instrument import audit, audit_actor, configure
>>> from audit_instrument.senders import MemorySender
>>> memory = MemorySender()
>>> configure(memory)
>>> @audit("user.login", "C")
... def login() -> None: ...
>>> with audit_actor(id="user_1", name="user@email.com", group="organization_1"):
...     login()
>>> memory.events[0].actor_name
'user@email.com'
>>> configure()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import signals
from ._stats import SenderStats, Stats, stats
from .config import DEFAULT_MASK, Sender, configure, settings
from .context import (
    AuditContext,
    AuditScope,
    audit_actor,
    audit_context,
    audit_scope,
    bind_context,
    current_context,
    set_actor,
)
from .errors import AuditConfigError, AuditError, AuditValidationError, DeliveryError
from .event import ActionType, AuditEvent, Target
from .instrument import AuditBuilder, audit
from .signals import emit
from .store import AuditStore
from .threads import ContextThread, ContextThreadPoolExecutor, run_in_executor

if TYPE_CHECKING:
    from .senders.workos import WorkOS

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # WorkOS pulls in httpx (~90 ms): imported on first use, not with the package.
    if name == "WorkOS":
        from .senders.workos import WorkOS

        return WorkOS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MASK",
    "ActionType",
    "AuditBuilder",
    "AuditConfigError",
    "AuditContext",
    "AuditScope",
    "AuditError",
    "AuditEvent",
    "AuditStore",
    "AuditValidationError",
    "ContextThread",
    "ContextThreadPoolExecutor",
    "DeliveryError",
    "Sender",
    "SenderStats",
    "Stats",
    "Target",
    "WorkOS",
    "__version__",
    "audit",
    "audit_actor",
    "audit_context",
    "audit_scope",
    "bind_context",
    "configure",
    "current_context",
    "emit",
    "run_in_executor",
    "set_actor",
    "settings",
    "signals",
    "stats",
]
