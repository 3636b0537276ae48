"""The testproject's Celery app: ``celery -A testproject.celery_app worker -l info``.

Why these choices:

- Configuration comes from Django settings (``CELERY_*`` names), the usual
  Django layout, so the site and its workers read one file.
- The broker is ``CELERY_BROKER_URL`` (Celery reads that variable itself, and
  it wins over everything), else a ``CELERY_BROKER_URL`` setting, else
  ``REDIS_URL``: the Redis the site logs to, so the demo needs one Redis only.
  Results are stored only when ``CELERY_RESULT_BACKEND`` (variable or setting)
  names a backend.
- ``worker_hijack_root_logger`` is off: Celery would otherwise empty the root
  logger of the LOGGING handlers, the RedisLogHandler among them, and the
  worker's own lines ("Task ... succeeded") would not reach the task's stream.

The Django app ``redis_logstream`` connects the signals that carry the log
context into tasks when Django starts in the worker (Celery's Django fixup
calls ``django.setup()``), so nothing Celery-specific is needed here.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")


def _defaults() -> dict[str, Any]:
    """Lowest-precedence configuration, read when Celery first needs it."""
    from django.conf import settings

    return {
        "broker_url": os.environ.get("REDIS_URL") or settings.REDIS_URL,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
    }


app = Celery("testproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.add_defaults(_defaults)
# Task modules of the installed apps, and the site's own (testproject is not
# an installed app).
app.autodiscover_tasks()
app.autodiscover_tasks(["testproject"])
