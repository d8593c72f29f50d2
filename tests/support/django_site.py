"""One Django configuration for the whole test run: a SQLite file database, auth, sessions.

Importing this module configures Django (once per process) and sets it up;
:func:`migrate` creates the tables the first time a test needs them.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import django
from django.conf import settings

_DIRECTORY = Path(tempfile.mkdtemp(prefix="audit-django-"))
atexit.register(shutil.rmtree, _DIRECTORY, ignore_errors=True)

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="audit-instrument-tests",
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "audit_instrument.integrations.django",
            "support.orm_app",  # models of tests/test_orm_django.py
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                               "NAME": str(_DIRECTORY / "db.sqlite3"),
                               "OPTIONS": {"timeout": 30}}},
        USE_TZ=True,
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],  # fast, tests only
    )
    django.setup()

_migrated = False


def migrate() -> None:
    """Create the database tables (once)."""
    global _migrated
    if not _migrated:
        from django.core.management import call_command

        call_command("migrate", run_syncdb=True, verbosity=0)
        _migrated = True
