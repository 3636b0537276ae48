"""Django app configuration."""

from django.apps import AppConfig


class RedisLogstreamConfig(AppConfig):
    """Installing the app is optional for the handler itself; it brings the
    management commands, system checks and the live console."""

    name = "redis_logstream"
    label = "redis_logstream"
    verbose_name = "Redis log stream"
    default_auto_field = "django.db.models.AutoField"
