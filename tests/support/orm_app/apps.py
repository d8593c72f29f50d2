"""The test app's config: an explicit primary key type (no models.W042 warning)."""

from __future__ import annotations

from django.apps import AppConfig


class OrmAppConfig(AppConfig):
    name = "support.orm_app"
    label = "orm_app"
    default_auto_field = "django.db.models.AutoField"
