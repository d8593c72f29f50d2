"""Checkpoints: a signed chain head as one short line, kept outside the store.

:meth:`AuditStore.checkpoint` returns a line like::

    aic1.1042.3f9a…(64 hex).2026-01-31T12:00:00Z.9b2c…(32 hex)

— row number, that row's hash, when it was taken, and (on a keyed store) an
HMAC of the rest, ``-`` otherwise. Log it, send it as an audit event, put
it in a ticket: ``verify(against=...)`` later proves that rows up to that
one are still there and unchanged, which catches a truncation or a
rewritten chain that the chain alone cannot (an unkeyed chain can be
recomputed by anyone; a keyed one still allows moving back to an older
signed head).
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from ..errors import AuditValidationError
from .chain import ChainKey

__all__ = ["Checkpoint"]

_PREFIX = "aic1"
_FORM = re.compile(
    r"aic1\.(?P<seq>0|[1-9]\d{0,18})\.(?P<hash>[0-9a-f]{64})\."
    r"(?P<at>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\.(?P<mac>[0-9a-f]{32}|-)"
)
_MAC_HEX = 32  # 128 bits of HMAC-SHA256: plenty against forgery, and shorter to log


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A chain head at a moment: row ``seq`` had ``hash``; ``mac`` signs it on a keyed store."""

    seq: int
    hash: str
    at: datetime
    mac: str | None = None

    def _body(self) -> str:
        return f"{_PREFIX}.{self.seq}.{self.hash}.{self.at.strftime('%Y-%m-%dT%H:%M:%SZ')}"

    def __str__(self) -> str:
        return f"{self._body()}.{self.mac or '-'}"

    @classmethod
    def make(cls, seq: int, digest: str, key: ChainKey | None) -> Checkpoint:
        """A checkpoint of the head ``(seq, digest)`` now, signed with ``key`` if given."""
        at = datetime.now(UTC).replace(microsecond=0)
        unsigned = cls(seq, digest, at)
        if key is None:
            return unsigned
        return cls(seq, digest, at, key.mac("checkpoint." + unsigned._body())[:_MAC_HEX])

    @classmethod
    def parse(cls, text: object) -> Checkpoint:
        """Read a checkpoint line; AuditValidationError (field ``against``) if it is not one."""
        match = _FORM.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise AuditValidationError(
                "against", "is not a checkpoint from AuditStore.checkpoint() "
                "(aic1.<row>.<hash>.<time>.<mac or ->)", text,
            )
        try:
            at = datetime.strptime(match["at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise AuditValidationError("against", "has an impossible time", text) from None
        mac = None if match["mac"] == "-" else match["mac"]
        return cls(int(match["seq"]), match["hash"], at, mac)

    def signed_by(self, key: ChainKey) -> bool:
        """Whether ``mac`` is this checkpoint's MAC under ``key``."""
        if self.mac is None:
            return False
        expected = key.mac("checkpoint." + self._body())[:_MAC_HEX]
        return hmac.compare_digest(expected, self.mac)
