"""The hash chain: what a row stores and hashes, how rows link, and the optional key.

Every row holds an event's canonical JSON (:func:`canonical_json`) and a
hash linking it to the row before it:

* **unkeyed** (the default): ``sha256(previous hash + canonical JSON)``, hex.
  Anyone can recompute it, so the chain proves the file was not edited
  *without recomputing every later hash*.
* **keyed** (``AuditStore(path, key=...)``): ``HMAC-SHA256(key, previous hash
  + canonical JSON)``, hex. Recomputing it needs the key, which never goes
  into the file; the file only records that the chain is keyed, from which
  row, the key's id (a one-way digest of the key, to tell a wrong key from
  an edit) and a MAC of the chain head, so that cutting rows off the end and
  moving the head back needs the key too.

The first row chains from :data:`GENESIS_HASH`. A store written without a
key can be given one later: rows from then on are keyed, and since each
keyed row's MAC covers the hash before it, the unkeyed rows before are
covered as well.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._json import canonical_json
from ..errors import AuditConfigError

__all__ = [
    "GENESIS_HASH",
    "KEY_ENV",
    "ChainBase",
    "ChainHead",
    "ChainKey",
    "Linker",
    "Seal",
    "canonical_json",
    "chain_hash",
    "head_text",
    "record_targets",
    "resolve_key",
]

GENESIS_HASH = "0" * 64
"""The "previous hash" of the first row."""

KEY_ENV = "AUDIT_STORE_KEY"
"""The environment variable a store's key is read from when ``key`` is not given."""

_MIN_KEY_BYTES = 16
_KEY_ID_INPUT = b"audit_instrument store key id"


def chain_hash(previous: str, record: str) -> str:
    """``sha256(previous hash + canonical JSON)`` as hex: one link of an unkeyed chain."""
    return hashlib.sha256((previous + record).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last row of the chain: keep it elsewhere to anchor the whole file."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class ChainBase:
    """Where a pruned chain starts: rows up to ``seq`` were moved out (``prune``).

    The first row kept follows ``hash``, the hash of row ``seq``, as row 1
    follows :data:`GENESIS_HASH`; ``pruned_at`` is when (stored text form).
    On a keyed chain the head MAC covers the base, so moving it needs the key.
    """

    seq: int
    hash: str
    pruned_at: str


@dataclass(frozen=True, slots=True)
class Seal:
    """What the file records about its key: rows from ``keyed_from`` on are HMACs.

    ``key_id`` tells which key (a digest that does not reveal it); ``head_mac``
    is the MAC of the committed head, renewed with every write.
    """

    keyed_from: int
    key_id: str
    head_mac: str


class ChainKey:
    """An HMAC-SHA256 key for a keyed chain. Its value is never shown.

    ``key`` is text (UTF-8) or bytes, at least 16 bytes: for example
    ``secrets.token_hex(32)``. ``id`` is a short one-way digest that names the
    key in the file and in messages.
    """

    __slots__ = ("_key", "id")

    def __init__(self, key: str | bytes) -> None:
        if isinstance(key, str):
            try:
                key = key.encode("utf-8")
            except UnicodeEncodeError:
                raise AuditConfigError("the store key is not valid text") from None
        if not isinstance(key, bytes):
            raise AuditConfigError(
                f"the store key must be str or bytes, not {type(key).__name__}"
            )
        if len(key) < _MIN_KEY_BYTES:
            raise AuditConfigError(
                f"the store key is too short: use at least {_MIN_KEY_BYTES} random bytes "
                "(e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        self._key = key
        self.id = hmac.new(key, _KEY_ID_INPUT, hashlib.sha256).hexdigest()[:16]

    def mac(self, text: str) -> str:
        """HMAC-SHA256 of ``text`` (UTF-8) as hex."""
        return hmac.digest(self._key, text.encode("utf-8"), "sha256").hex()

    def __repr__(self) -> str:
        return f"<ChainKey id={self.id}>"

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("a ChainKey is not pickled (it would write the key out)")


def resolve_key(key: str | bytes | ChainKey | None) -> ChainKey | None:
    """The key given, else the one in :data:`KEY_ENV`, else ``None``."""
    if isinstance(key, ChainKey):
        return key
    if key is None:
        key = os.environ.get(KEY_ENV) or None
        if key is None:
            return None
    return ChainKey(key)


def head_text(seq: int, digest: str, base: ChainBase | None = None) -> str:
    """What the head MAC signs: the head, and where the chain starts once it was pruned."""
    if base is None:
        return f"head.{seq}.{digest}"
    return f"head.{seq}.{digest}.from.{base.seq}.{base.hash}"


class Linker:
    """Computes row hashes and head MACs for a chain, given its seal and maybe its key.

    A store makes one per transaction from the seal it reads there, so a
    store that another process keyed meanwhile is noticed before a row is
    written the wrong way.
    """

    __slots__ = ("_key", "seal")

    def __init__(self, seal: Seal | None, key: ChainKey | None, where: str) -> None:
        if seal is not None and (key is None or key.id != seal.key_id):
            reason = "no key was given" if key is None else f"the given key is {key.id}"
            raise AuditConfigError(
                f"{where}: the chain is keyed (key id {seal.key_id}) and {reason}: "
                f"writing and verifying need its key (key= or {KEY_ENV})"
            )
        self.seal = seal
        self._key = key

    def link(self, seq: int, previous: str, record: str) -> str:
        """The hash of row ``seq`` holding ``record`` after a row hashed ``previous``."""
        seal = self.seal
        if seal is not None and seq >= seal.keyed_from:
            assert self._key is not None
            return self._key.mac(previous + record)
        return chain_hash(previous, record)

    def head_mac(self, seq: int, digest: str, base: ChainBase | None = None) -> str | None:
        """The MAC of the head ``(seq, digest)`` (and ``base``), or ``None`` when unkeyed."""
        if self.seal is None or self._key is None:
            return None
        return self._key.mac(head_text(seq, digest, base))


def record_targets(record: Mapping[str, Any]) -> tuple[str, ...]:
    """Every target id a stored record names: ``target_id`` first, then ``targets[].id``."""
    ids = [record["target_id"]]
    targets = record.get("targets")
    if isinstance(targets, list):
        for target in targets:
            if isinstance(target, Mapping):
                target_id = target.get("id")
                if isinstance(target_id, str) and target_id not in ids:
                    ids.append(target_id)
    return tuple(ids)
