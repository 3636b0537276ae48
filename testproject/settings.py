"""Settings of the test/demo site.

Redis comes from ``REDIS_URL``: the tests and ``make demo`` always set it to a
server they started. The fallback is only the conventional local default for
someone running ``manage.py`` by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "dev-only-insecure-secret-key-for-the-redis-logstream-testproject"
)
DEBUG = os.environ.get("DJANGO_DEBUG", "1").lower() in {"1", "true", "yes", "on"}
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "testserver"]

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "redis_logstream",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Request user -> log context: after AuthenticationMiddleware.
    "redis_logstream.middleware.LogContextMiddleware",
]

ROOT_URLCONF = "testproject.urls"
WSGI_APPLICATION = "testproject.wsgi.application"
ASGI_APPLICATION = "testproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "testproject" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# The demo's database lives in .demo/ (git-ignored); the tests use an
# in-memory test database and never create this file.
DATA_DIR = Path(os.environ.get("TESTPROJECT_DATA_DIR", BASE_DIR / ".demo"))
DATA_DIR.mkdir(parents=True, exist_ok=True)
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA_DIR / "db.sqlite3",
    }
}

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
    }
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The library reads its options from here (upper-case keys), below the
# handler's own keyword arguments.
REDIS_LOGSTREAM = {"CONNECTION": "default"}

# The demo prints the records it reads back from Redis; a second copy on the
# console would interleave with them, so it can turn the console handler off.
_CONSOLE = ["console"] if os.environ.get("TESTPROJECT_LOG_CONSOLE", "1") == "1" else []

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "console": {"format": "%(asctime)s %(levelname)-8s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "console",
            "level": "INFO",
        },
        "redis": {
            "class": "redis_logstream.RedisLogHandler",
            "level": "INFO",
        },
    },
    "root": {"handlers": [*_CONSOLE, "redis"], "level": "INFO"},
    "loggers": {
        # The site's own loggers, handled here and not again by the root.
        "testproject": {"handlers": [*_CONSOLE, "redis"], "level": "INFO", "propagate": False},
        # runserver's access log: Django keeps it off the root logger.
        "django.server": {
            "handlers": [*_CONSOLE, "redis"],
            "level": "INFO",
            "propagate": False,
        },
    },
}
