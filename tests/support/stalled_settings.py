"""Settings for servers that meet clients which stop reading: the test site
with the console's limits made short enough to show within a test."""

from support.stream_settings import *  # noqa: F403

REDIS_LOGSTREAM = {
    **REDIS_LOGSTREAM,  # noqa: F405
    "STREAM_MAX_AGE": 120.0,  # the write timeout, not the age, must end a stuck response
    "STREAM_WRITE_TIMEOUT": 2.0,
    "STREAM_INBOX_BYTES": 4 * 1024 * 1024,
}
