"""Views of the test/demo site: pages that log, so there is something to stream."""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse

from redis_logstream import get_log_context, get_user_context, job_id_factory, log_context
from redis_logstream.console.tokens import make_stream_token

logger = logging.getLogger(__name__)

MAX_STEPS = 20


def home(request: HttpRequest) -> HttpResponse:
    """Landing page with links; its visit is one record (under the user's
    context when signed in: LogContextMiddleware sets it)."""
    who = request.user.get_username() if request.user.is_authenticated else "anonymous"
    logger.info("home page viewed by %s", who)
    return render(request, "home.html", {"log_context": get_log_context()})


def work(request: HttpRequest) -> JsonResponse:
    """Log a few progress lines under a context and say which one.

    A signed-in user's work is logged under their user context ("User.alice"),
    which is what they watch live; anonymous requests, or ``?job=1``, run as a
    job with a fresh job id, the way a long task is followed. ``?steps=N``
    (1..20) sets how many progress lines; ``?fail=1`` adds an exception with
    its traceback. The JSON answer names the context so a client (the tests,
    the demo) can read that stream.
    """
    try:
        steps = min(max(int(request.GET.get("steps", "3")), 1), MAX_STEPS)
    except ValueError:
        steps = 3
    as_job = request.GET.get("job") == "1" or not request.user.is_authenticated
    context = job_id_factory("work") if as_job else get_user_context(request.user)
    who = request.user.get_username() if request.user.is_authenticated else "anonymous"

    records = 0
    with log_context(context):
        logger.info("work started for %s: %d steps", who, steps)
        records += 1
        for step in range(1, steps + 1):
            logger.info("step %d/%d done", step, steps)
            records += 1
        if request.GET.get("fail") == "1":
            try:
                raise RuntimeError(f"step {steps + 1} failed (requested with ?fail=1)")
            except RuntimeError:
                logger.exception("work failed for %s", who)
                records += 1
        logger.info("work finished for %s", who)
        records += 1
    # Where to watch it: a job gets a token link anyone with it may open.
    console = reverse("redis_logstream:console")
    if as_job:
        console += f"?token={make_stream_token(context, max_age=3600)}"
    return JsonResponse(
        {"context": context, "records": records, "steps": steps, "console": console}
    )
