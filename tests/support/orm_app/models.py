"""Models of the Django model-capture tests (tests/test_orm_django.py)."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import models

from audit_instrument.integrations.django import AuditedQuerySet, audit_model


class Tag(models.Model):
    name = models.CharField(max_length=50)

    class Meta:
        app_label = "orm_app"

    def __str__(self) -> str:
        return self.name


class Tweet(models.Model):
    body = models.TextField()
    views = models.IntegerField(default=0)
    author = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL)
    api_token = models.CharField(max_length=100, blank=True, default="")
    tags = models.ManyToManyField(Tag, blank=True, related_name="tweets")

    objects = AuditedQuerySet.as_manager()

    class Meta:
        app_label = "orm_app"

    def __str__(self) -> str:
        return self.body[:30]


class Wide(models.Model):
    """More fields than one event's metadata can hold."""

    locals().update({f"field_{i:02d}": models.CharField(max_length=600, default="")
                     for i in range(30)})
    objects = AuditedQuerySet.as_manager()

    class Meta:
        app_label = "orm_app"


audit_model(Tweet)
audit_model(Wide, category="wide_row", target_name=lambda row: f"wide #{row.pk}")
