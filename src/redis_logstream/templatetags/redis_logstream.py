"""``{% log_console %}``: the live console inside a site's own pages.

::

    {% load redis_logstream %}
    {% log_console %}                                   the signed-in user's own records
    {% log_console "global" %}                          the whole site (staff)
    {% log_console job.log_context token=True %}        a job page anyone with the page may watch
    {% log_console job.log_context token=True max_age=600 title="Import" %}

Without ``token`` the stream view checks the viewer's rights on each
connection (docs/console.md); with it the page carries a signed token for
that one context, valid ``max_age`` seconds (default one hour).
"""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse

from redis_logstream.console.access import GLOBAL, Grant
from redis_logstream.console.tokens import make_stream_token
from redis_logstream.console.views import stream_url

register = template.Library()


@register.inclusion_tag("redis_logstream/panel.html")
def log_console(
    context: str | None = None,
    *,
    token: bool = False,
    max_age: float = 3600,
    title: str | None = None,
) -> dict[str, Any]:
    """Render the console panel for ``context`` (default: the viewer's own)."""
    target = None if context == GLOBAL else context
    if token:
        if context is None:
            raise template.TemplateSyntaxError(
                "log_console token=True needs the context the token grants."
            )
        url = stream_url(Grant(target, token=make_stream_token(target, max_age)))
    elif context is None:
        url = reverse("redis_logstream:stream")
    else:
        url = stream_url(Grant(target))
    label = title or ("Whole site" if context == GLOBAL else context or "Your log records")
    return {"stream_url": url, "title": label, "firehose": context == GLOBAL}
