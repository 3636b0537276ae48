"""A small Django site that uses django-redis-logstream (demo and tests)."""
