"""No tables: one unmanaged model carries the library's permission.

``redis_logstream.view_all_logs`` lets a user who is not staff watch every
log context and the site-wide stream (an on-call role, a support team).
Grant it in the admin like any other permission.
"""

from django.db import models


class LogStreamAccess(models.Model):
    """Holds ``view_all_logs``; Django creates the permission, never a table."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("view_all_logs", "Can watch every log context and the site-wide stream")]
