"""Tags, branches and Call-IDs, from a cryptographic source that tests can replace.

RFC 3261 asks for tags (19.3) and Call-IDs (8.1.1.4) that are globally unique and
cryptographically random, and a branch unique across space and time (8.1.1.7). A
predictable one lets a peer that saw a single message guess the identifiers of the next
calls and forge a CANCEL, a BYE or a response into them, so they come from the
operating system's CSPRNG (`os.urandom`, what `secrets` uses), not from `random`.

The hot path draws five or six of them per call, so the bytes are taken from a pool
refilled 4 KiB at a time: one system call per ~500 identifiers, and an identifier costs
what `random.getrandbits` and formatting cost (docs/security.md has the figures). A forked
child drops the pool it inherited, or it would hand out its parent's next identifiers.

`use_source` replaces the source (a function from a byte count to that many bytes), so
that a test can assert exact bytes; `DEFAULT_SOURCE` puts the pool back.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

RandomBytes = Callable[[int], bytes]

POOL_BYTES = 4096

# Sizes in bytes: tags of 48 bits (19.3 asks for at least 32), branches of 64 after the
# magic cookie, Call-IDs of 96 bits before the '@host'.
TAG_BYTES = 6
BRANCH_BYTES = 8
CALL_ID_BYTES = 12
MAGIC_COOKIE = "z9hG4bK"


class RandomPool:
    """Bytes from `os.urandom`, drawn in blocks and handed out in slices, each once.

    The pool serves the thread that made it (the one that imported this module: the
    one the switch's event loop runs on); any other thread is given `os.urandom` bytes
    directly. That keeps two threads from ever sharing a slice without a lock, which
    would double the cost of an identifier.
    """

    __slots__ = ("_buf", "_owner", "_pos", "_size")

    def __init__(self, size: int = POOL_BYTES) -> None:
        self._size = size
        self._buf = b""
        self._pos = 0
        self._owner = threading.get_ident()

    def take(self, n: int) -> bytes:
        if threading.get_ident() != self._owner:
            return os.urandom(n)
        start = self._pos
        end = start + n
        if end > len(self._buf):
            self._buf = os.urandom(max(self._size, n))
            start, end = 0, n
        self._pos = end
        return self._buf[start:end]

    def reset(self) -> None:
        """Forget the pool: in a forked child, the parent hands out the same bytes."""
        self._buf = b""
        self._pos = 0
        self._owner = threading.get_ident()


_POOL = RandomPool()
DEFAULT_SOURCE: RandomBytes = _POOL.take
_source: RandomBytes = DEFAULT_SOURCE

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.reset)


def use_source(source: RandomBytes) -> RandomBytes:
    """Draw identifiers from `source` from now on; returns the source it replaces."""
    global _source
    previous, _source = _source, source
    return previous


@contextmanager
def source_of(source: RandomBytes) -> Iterator[None]:
    """`use_source` for the duration of a ``with`` block."""
    previous = use_source(source)
    try:
        yield
    finally:
        use_source(previous)


def new_tag() -> str:
    return _source(TAG_BYTES).hex()


def new_branch() -> str:
    return MAGIC_COOKIE + _source(BRANCH_BYTES).hex()


def new_call_id(host: str) -> str:
    return f"{_source(CALL_ID_BYTES).hex()}@{host}"
