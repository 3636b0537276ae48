"""Django app configuration."""

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured


class RedisLogstreamConfig(AppConfig):
    """Installing the app is optional for the handler itself; it brings the
    management commands, the system checks, the Celery integration, the
    live console, the purge of a deleted or renamed user's log context and,
    if asked for, the Prometheus metrics."""

    name = "redis_logstream"
    label = "redis_logstream"
    verbose_name = "Redis log stream"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from redis_logstream import checks, signals  # noqa: F401 - checks registers the system checks
        from redis_logstream.conf import site_setting

        signals.connect()  # each receiver reads PURGE_USER_CONTEXTS when it runs

        if site_setting("celery"):
            from redis_logstream.celery import install_if_available

            install_if_available()
        if site_setting("prometheus"):
            try:
                from redis_logstream.prometheus import register
            except ImportError as exc:
                raise ImproperlyConfigured(
                    "REDIS_LOGSTREAM['PROMETHEUS'] is True but prometheus_client is not "
                    "installed: pip install 'django-redis-logstream[prometheus]'."
                ) from exc
            register()
