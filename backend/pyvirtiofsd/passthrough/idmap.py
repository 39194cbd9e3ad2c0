"""UID/GID translation between guest and host: virtiofsd's ``--translate-uid/--translate-gid``.

Each option adds one rule ``TYPE:ARGS``:

=================================  ================================================================
``guest:GUEST:HOST:COUNT``         guest ids GUEST.. map 1:1 to host ids HOST.. (guest → host only)
``host:HOST:GUEST:COUNT``          host ids HOST.. map 1:1 to guest ids GUEST.. (host → guest only)
``map:GUEST:HOST:COUNT``           both of the above at once
``squash-guest:GUEST:HOST:COUNT``  COUNT guest ids from GUEST all become the one host id HOST
``squash-host:HOST:GUEST:COUNT``   COUNT host ids from HOST all become the one guest id GUEST
``forbid-guest:GUEST:COUNT``       a guest id in the range may not create a file or be given
                                   to one: such a request fails with EPERM
=================================  ================================================================

An id no rule covers maps to itself.  The two directions are separate tables and need not be
inverses of each other; within one direction, ranges must not overlap (a rule that would make
an id ambiguous is refused when the options are parsed, not when a guest trips over it).

Where the server applies them: the caller's ids of every request (guest → host, so files are
created with host ids), the uid/gid of a SETATTR (chown), and every attribute it sends (host →
guest).  ACL xattrs carry ids too and are *not* translated -- the reason virtiofsd refuses to
combine translation with ``--posix-acl``, and so do we.
"""
from __future__ import annotations

import bisect
import errno
import os
from dataclasses import dataclass

ID_MAX = 0xFFFFFFFF


class IdMapError(ValueError):
    """A rule that cannot be parsed or that overlaps an earlier one."""


@dataclass(frozen=True)
class _Range:
    start: int
    count: int
    target: int | None   # None: forbidden
    squash: bool = False

    @property
    def end(self) -> int:
        return self.start + self.count

    def apply(self, ident: int) -> int:
        if self.target is None:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM), f"id {ident} is forbidden")
        return self.target if self.squash else self.target + (ident - self.start)


class _Table:
    """Non-overlapping ranges of one direction, sorted by start."""

    def __init__(self, name: str):
        self.name = name
        self._starts: list[int] = []
        self._ranges: list[_Range] = []

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def add(self, r: _Range, rule: str) -> None:
        i = bisect.bisect_right(self._starts, r.start)
        before = self._ranges[i - 1] if i else None
        after = self._ranges[i] if i < len(self._ranges) else None
        if (before is not None and before.end > r.start) or (after is not None and r.end > after.start):
            raise IdMapError(f"{rule}: its {self.name} range [{r.start}, {r.end}) overlaps "
                             "an earlier rule")
        self._starts.insert(i, r.start)
        self._ranges.insert(i, r)

    def find(self, ident: int) -> _Range | None:
        i = bisect.bisect_right(self._starts, ident)
        if i:
            r = self._ranges[i - 1]
            if ident < r.end:
                return r
        return None


class IdMap:
    """One id kind's translation (make one for uids and one for gids)."""

    def __init__(self, rules: list[str] | tuple[str, ...] = (), kind: str = "uid"):
        self.kind = kind
        self.rules = tuple(rules)
        self._to_host = _Table("guest-to-host")
        self._to_guest = _Table("host-to-guest")
        for rule in rules:
            self._add(rule)

    def __bool__(self) -> bool:
        return bool(self._to_host) or bool(self._to_guest)

    def _add(self, rule: str) -> None:
        kind, _, rest = rule.strip().partition(":")
        fields = rest.split(":") if rest else []
        want = 2 if kind == "forbid-guest" else 3
        if kind not in ("guest", "host", "map", "squash-guest", "squash-host", "forbid-guest"):
            raise IdMapError(f"{rule!r}: unknown type {kind!r} (guest, host, map, squash-guest, "
                             "squash-host, forbid-guest)")
        if len(fields) != want:
            shape = "forbid-guest:FROM:COUNT" if want == 2 else f"{kind}:FROM:TO:COUNT"
            raise IdMapError(f"{rule!r}: expected {shape}")
        try:
            nums = [int(f, 10) for f in fields]
        except ValueError:
            raise IdMapError(f"{rule!r}: ids and counts are decimal numbers") from None
        if any(n < 0 or n > ID_MAX for n in nums):
            raise IdMapError(f"{rule!r}: ids are 0..{ID_MAX}")
        count = nums[-1]
        if count == 0:
            raise IdMapError(f"{rule!r}: the count must be at least 1")
        src = nums[0]
        if src + count - 1 > ID_MAX:
            raise IdMapError(f"{rule!r}: the range ends past {ID_MAX}")
        if kind == "forbid-guest":
            self._to_host.add(_Range(src, count, None), rule)
            return
        dst = nums[1]
        squash = kind.startswith("squash")
        if not squash and dst + count - 1 > ID_MAX:
            raise IdMapError(f"{rule!r}: the target range ends past {ID_MAX}")
        if kind in ("guest", "map", "squash-guest"):
            self._to_host.add(_Range(src, count, dst, squash), rule)
        if kind == "map":
            self._to_guest.add(_Range(dst, count, src), rule)
        if kind in ("host", "squash-host"):
            self._to_guest.add(_Range(src, count, dst, squash), rule)

    def to_host(self, ident: int) -> int:
        """The host id for guest id ``ident``; OSError(EPERM) if it is forbidden."""
        r = self._to_host.find(ident)
        return ident if r is None else r.apply(ident)

    def to_host_lenient(self, ident: int) -> int:
        """As :meth:`to_host`, but a forbidden id stays itself (for requests that create
        nothing: the id then only meets the host's permission checks)."""
        r = self._to_host.find(ident)
        return ident if r is None or r.target is None else r.apply(ident)

    def to_guest(self, ident: int) -> int:
        """The guest id for host id ``ident`` (never fails)."""
        r = self._to_guest.find(ident)
        return ident if r is None else r.apply(ident)


__all__ = ["IdMap", "IdMapError"]
