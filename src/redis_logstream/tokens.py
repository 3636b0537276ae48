"""Signed stream tokens (the public path; they live in console/tokens.py)."""

from redis_logstream.console.tokens import InvalidStreamToken, make_stream_token, read_stream_token

__all__ = ["InvalidStreamToken", "make_stream_token", "read_stream_token"]
