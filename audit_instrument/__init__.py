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

from . import signals
from .config import DEFAULT_MASK, Sender, configure, settings
from .context import AuditContext, audit_actor, audit_context, bind_context, current_context
from .errors import AuditConfigError, AuditError, AuditValidationError, DeliveryError
from .event import ActionType, AuditEvent
from .instrument import AuditBuilder, audit
from .signals import emit

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MASK",
    "ActionType",
    "AuditBuilder",
    "AuditConfigError",
    "AuditContext",
    "AuditError",
    "AuditEvent",
    "AuditValidationError",
    "DeliveryError",
    "Sender",
    "__version__",
    "audit",
    "audit_actor",
    "audit_context",
    "bind_context",
    "configure",
    "current_context",
    "emit",
    "settings",
    "signals",
]
