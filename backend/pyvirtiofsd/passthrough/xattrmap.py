"""Extended-attribute name mapping: virtiofsd's ``--xattrmap`` rule language.

Why: a guest's xattr names may mean something else on the host (``security.selinux`` of the
guest is not the host's label) or be out of the daemon's reach (``trusted.*`` needs
CAP_SYS_ADMIN).  A map renames them on the way in and out, e.g. every guest xattr stored
under ``user.virtiofs.`` on the host: ``--xattrmap=:map::user.virtiofs.:``.

Syntax (virtiofsd's): a list of rules, white space allowed between them.  A rule's first
character is its field separator, used for the whole rule::

    :TYPE:SCOPE:KEY:PREPEND:        TYPE  prefix | ok | bad | unsupported
    :map:KEY:PREPEND:               SCOPE client | server | all

* A name from the guest (getxattr, setxattr, removexattr, a security context on create)
  is tried against the rules whose scope is ``client`` or ``all``; a rule matches when the
  name starts with KEY.  ``prefix`` replaces KEY by PREPEND, ``ok`` passes the name,
  ``bad`` refuses it with EPERM, ``unsupported`` with ENOTSUP.
* A name from the host (listxattr) is tried against ``server``/``all`` rules; a rule
  matches when the name starts with PREPEND.  ``prefix`` replaces PREPEND by KEY, ``ok``
  passes it, ``bad``/``unsupported`` hide it.
* The first matching rule decides.  A guest name no rule matches is refused (EPERM), a host
  name no rule matches is hidden: every name needs a rule, typically a catch-all last.
* ``map`` is shorthand, allowed once and last.  ``:map:KEY:PREPEND:`` with a KEY means
  prefix KEY as PREPEND, hide host names that start with KEY, refuse guest names that start
  with PREPEND (so a guest cannot reach the mapped names directly) and pass everything
  else; with an empty KEY every name is prefixed and unprefixed host names are hidden.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass

TYPES = ("prefix", "ok", "bad", "unsupported")
SCOPES = ("client", "server", "all")


class XattrMapError(ValueError):
    """The rule string cannot be parsed."""


@dataclass(frozen=True)
class Rule:
    type: str
    scope: str
    key: bytes
    prepend: bytes

    @property
    def client(self) -> bool:
        return self.scope in ("client", "all")

    @property
    def server(self) -> bool:
        return self.scope in ("server", "all")


def _fields(text: str, pos: int, sep: str, n: int) -> tuple[list[str], int]:
    """``n`` fields each ended by ``sep``, starting at ``pos``; returns them and the end."""
    out = []
    for _ in range(n):
        end = text.find(sep, pos)
        if end < 0:
            raise XattrMapError(f"rule at offset {pos}: missing a closing {sep!r}")
        out.append(text[pos:end])
        pos = end + 1
    return out, pos


def _expand_map(key: bytes, prepend: bytes) -> list[Rule]:
    if not key:
        return [Rule("prefix", "all", b"", prepend), Rule("bad", "all", b"", b"")]
    return [Rule("prefix", "all", key, prepend),
            Rule("bad", "server", b"", key),
            Rule("bad", "client", prepend, b""),
            Rule("ok", "all", b"", b"")]


def parse(text: str) -> list[Rule]:
    """The rules of a ``--xattrmap`` string; :class:`XattrMapError` says what is wrong."""
    rules: list[Rule] = []
    pos, seen_map = 0, False
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        if seen_map:
            raise XattrMapError("a map rule must be the last rule")
        sep = text[pos]
        if sep.isalnum():
            raise XattrMapError(f"rule at offset {pos}: starts with {sep!r}; a rule starts "
                                "with its separator, e.g. :ok:all:::")
        (kind,), pos = _fields(text, pos + 1, sep, 1)
        if kind == "map":
            (key, prepend), pos = _fields(text, pos, sep, 2)
            rules += _expand_map(os.fsencode(key), os.fsencode(prepend))
            seen_map = True
            continue
        if kind not in TYPES:
            raise XattrMapError(f"unknown rule type {kind!r} (prefix, ok, bad, unsupported, map)")
        (scope, key, prepend), pos = _fields(text, pos, sep, 3)
        if scope not in SCOPES:
            raise XattrMapError(f"unknown scope {scope!r} (client, server, all)")
        rules.append(Rule(kind, scope, os.fsencode(key), os.fsencode(prepend)))
    if not rules:
        raise XattrMapError("no rules")
    return rules


class XattrMap:
    """Applies parsed rules; see the module docstring for their meaning."""

    def __init__(self, text: str):
        self.text = text
        self.rules = parse(text)

    def to_host(self, name: bytes) -> bytes:
        """The host name for guest name ``name``; OSError(EPERM/ENOTSUP) when refused."""
        for r in self.rules:
            if r.client and name.startswith(r.key):
                if r.type == "prefix":
                    return r.prepend + name[len(r.key):]
                if r.type == "ok":
                    return name
                code = errno.EPERM if r.type == "bad" else errno.ENOTSUP
                raise OSError(code, os.strerror(code), name)
        raise OSError(errno.EPERM, os.strerror(errno.EPERM), name)

    def to_guest(self, name: bytes) -> bytes | None:
        """The guest name for host name ``name``, or None when the guest must not see it."""
        for r in self.rules:
            if r.server and name.startswith(r.prepend):
                if r.type == "prefix":
                    return r.key + name[len(r.prepend):]
                if r.type == "ok":
                    return name
                return None
        return None


__all__ = ["Rule", "XattrMap", "XattrMapError", "parse"]
