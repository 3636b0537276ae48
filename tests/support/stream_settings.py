"""Settings for the web servers the stream tests start (uvicorn, gunicorn,
runserver): the test site's, with a quick heartbeat and short responses so
the protocol's timing shows within a test's patience."""

from testproject.settings import *  # noqa: F403

REDIS_LOGSTREAM = {
    **REDIS_LOGSTREAM,  # noqa: F405
    "STREAM_HEARTBEAT": 0.3,
    "STREAM_MAX_AGE": 4.0,
}
