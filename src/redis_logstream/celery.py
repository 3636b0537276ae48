"""Celery integration (being written)."""


def install_if_available() -> bool:
    return False
