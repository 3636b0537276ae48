"""Channel and stream names.

A context value becomes part of a pub/sub channel and a stream key, so it
is encoded: characters outside a small safe set become ``%XX`` (the UTF-8
bytes, upper-case hex), ``%`` itself included.  The encoding is injective
(two contexts never share a channel), reversible (:func:`decode_context`)
and leaves no pub/sub glob character (``* ? [ ] \\``), space, control
character or cluster hash-tag brace in a name.  Everyday names such as
``User.alice`` or ``job_1b4e...`` pass through unchanged, which keeps the
names existing consumers use: ``logs:User.alice``, ``stream:logs:User.alice``.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["SAFE_CHARACTERS", "Names", "decode_context", "encode_context"]

SAFE_CHARACTERS = frozenset(string.ascii_letters + string.digits + "._-@:")
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-@:]")


def _quote(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8", "surrogatepass"))


def encode_context(context: str) -> str:
    """The form of ``context`` used inside channel and key names."""
    return _UNSAFE.sub(_quote, context)


def decode_context(encoded: str) -> str:
    """Invert :func:`encode_context`."""
    return unquote(encoded, encoding="utf-8", errors="surrogatepass")


@dataclass(frozen=True)
class Names:
    """The naming scheme of one handler: ``<prefix>:<context>`` channels,
    ``<stream_prefix><channel>`` streams, and the global pair."""

    channel_prefix: str = "logs"
    global_channel: str = "global"
    stream_prefix: str = "stream:"

    def channel(self, context: str | None) -> str:
        """The pub/sub channel of ``context`` (None: the global channel)."""
        if context is None:
            return f"{self.channel_prefix}:{self.global_channel}"
        encoded = encode_context(context)
        if encoded == self.global_channel:
            # Only reachable with a custom global_channel; the leading %XX
            # keeps such a context apart from the firehose and from any
            # other context (a literal '%' would itself be encoded).
            encoded = f"%{ord(encoded[0]):02X}{encoded[1:]}"
        return f"{self.channel_prefix}:{encoded}"

    def stream(self, context: str | None) -> str:
        """The stream key of ``context`` (None: the global stream)."""
        return self.stream_prefix + self.channel(context)

    @property
    def global_stream(self) -> str:
        return self.stream(None)

    @property
    def global_channel_name(self) -> str:
        return self.channel(None)
