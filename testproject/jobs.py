"""The demo job: a long piece of work that reports its progress in the log.

Started from a page by a signed-in user, it runs in a thread (and, when a
Celery worker answers, also as a Celery task), and logs under the user's
context, so the user follows it live with ``manage.py tail_logs User.alice -f``
or, later, in the browser.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.views.decorators.http import require_POST

from redis_logstream import get_log_context

logger = logging.getLogger("testproject.jobs")

MAX_ROWS = 1_000_000


def run_export(rows: int, steps: int = 5, pause: float = 0.4) -> None:
    """Pretend to export ``rows`` rows, saying how far it got."""
    logger.info("export of %d rows started", rows)
    for step in range(1, steps + 1):
        time.sleep(pause)
        logger.info("progress %3d%% (%d/%d rows)", step * 100 // steps, rows * step // steps, rows)
    logger.info("export of %d rows finished", rows)


def start_thread(rows: int, **kwargs: float) -> threading.Thread:
    """Run the export in a thread that keeps the caller's log context."""
    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run,
        args=(run_export, rows),
        kwargs=kwargs,
        daemon=True,
        name="demo-export",
    )
    thread.start()
    return thread


def send_task_if_worker(rows: int) -> str | None:
    """Send the Celery version when a worker answers a ping; its task id, else None."""
    try:
        from testproject.celery_app import app
        from testproject.tasks import export_report
    except ImportError:
        return None
    try:
        if not app.control.ping(timeout=0.5):
            return None
    except Exception:  # no broker: the thread alone shows the job
        return None
    return export_report.delay(rows, 0.4).id


@login_required
@require_POST
def start_job(request: HttpRequest) -> JsonResponse:
    """Start the demo job under the signed-in user's context (set by the middleware)."""
    try:
        rows = min(max(int(request.POST.get("rows", "50000")), 1), MAX_ROWS)
    except ValueError:
        rows = 50000
    context = get_log_context()
    start_thread(rows)
    task_id = send_task_if_worker(rows)
    return JsonResponse(
        {
            "context": context,
            "celery_task": task_id,
            "watch": f"python manage.py tail_logs {context} -f",
            "console": reverse("redis_logstream:console"),
        }
    )
