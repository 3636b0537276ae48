"""Channel and stream names.

A context value becomes part of a pub/sub channel and a stream key, so it
is encoded: characters outside a small safe set become ``%XX`` (the UTF-8
bytes, upper-case hex), ``%`` itself included.  The encoding is injective
(two contexts never share a channel), reversible (:func:`decode_context`)
and leaves no pub/sub glob character (``* ? [ ] \\``), space, control
character or cluster hash-tag brace in a name.  Everyday names such as
``User.alice`` or ``job_1b4e...`` pass through unchanged, which keeps the
names existing consumers use: ``logs:User.alice``, ``stream:logs:User.alice``.

On Redis Cluster (``hash_tags=True``) the encoded context is wrapped in a
hash tag, ``logs:{User.alice}`` and ``stream:logs:{User.alice}``, so that a
context's channel and stream live in one slot: one script writes both, and
sharded pub/sub (``SPUBLISH``) reaches the shard that holds the stream.
The global pair becomes ``logs:{global}`` and ``stream:logs:{global}``.
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
    ``<stream_prefix><channel>`` streams, and the global pair; with
    ``hash_tags``, ``<prefix>:{<context>}`` (Redis Cluster)."""

    channel_prefix: str = "logs"
    global_channel: str = "global"
    stream_prefix: str = "stream:"
    hash_tags: bool = False

    def channel(self, context: str | None) -> str:
        """The pub/sub channel of ``context`` (None: the global channel)."""
        if context is None:
            encoded = self.global_channel
        else:
            encoded = encode_context(context)
            if encoded == self.global_channel:
                # Only reachable with a custom global_channel; the leading %XX
                # keeps such a context apart from the firehose and from any
                # other context (a literal '%' would itself be encoded).
                encoded = f"%{ord(encoded[0]):02X}{encoded[1:]}"
        if self.hash_tags:
            return f"{self.channel_prefix}:{{{encoded}}}"
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

    @property
    def dead_letter_prefix(self) -> str:
        """Where consumer groups' dead-letter streams live by default:
        ``<stream_prefix><prefix>/dead-letter/<group>``."""
        return f"{self.stream_prefix}{self.channel_prefix}/dead-letter/"
