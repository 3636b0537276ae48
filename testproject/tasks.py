"""The demo's Celery task: a long export that reports its progress in the log.

It sets no log context itself, on purpose: it logs under whatever context it
runs in, which is the sender's ("User.alice" when a signed-in user's request
sent it) or, for a task sent with no context, ``task_context(<its id>)``.
Either way the person who started it can watch the stream.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task, shared_task

from redis_logstream import get_log_context

logger = logging.getLogger("testproject.tasks")

#: Progress lines per export, whatever the number of rows.
MAX_STEPS = 5


@shared_task(bind=True)
def export_report(self: Task, rows: int, delay: float) -> dict[str, Any]:
    """Pretend to export ``rows`` rows, pausing ``delay`` seconds between progress lines.

    Returns the row count and the context it ran under, so a caller (the
    tests, a status page) can tell which stream its records went to.
    """
    if rows < 0 or delay < 0:
        raise ValueError(f"rows and delay must be >= 0, not rows={rows!r} delay={delay!r}")
    report = self.request.id
    steps = min(rows, MAX_STEPS)
    logger.info("report %s: export of %d rows started", report, rows)
    for step in range(1, steps + 1):
        time.sleep(delay)
        logger.info(
            "report %s: progress %3d%% (%d/%d rows)",
            report,
            step * 100 // steps,
            rows * step // steps,
            rows,
        )
    logger.info("report %s: export of %d rows finished", report, rows)
    return {"rows": rows, "context": get_log_context()}
