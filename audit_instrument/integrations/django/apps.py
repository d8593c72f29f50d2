"""The Django app of audit_instrument: it registers the system check."""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped]


class AuditInstrumentConfig(AppConfig):  # type: ignore[misc]
    """``INSTALLED_APPS = [..., "audit_instrument.integrations.django"]``."""

    name = "audit_instrument.integrations.django"
    label = "audit_instrument"
    verbose_name = "Audit instrument"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the check)
