"""Verification: walk a store's rows in chain order and name the first that is not intact.

The walk recomputes each row's hash from the one before (keyed rows need
the key), checks the queried columns, the target index and the activity
counts against the hashed records, then the chain head (and its MAC on a
keyed chain), and, if given, a checkpoint taken earlier. A pruned chain is
walked from its base: the first row kept must follow the hash of the last
row removed. The database's own checks (integrity,
schema) run before it, in :meth:`AuditStore.verify`.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from ..errors import AuditConfigError
from ..event import format_timestamp
from .backend import Snapshot, TargetRow
from .chain import GENESIS_HASH, KEY_ENV, ChainBase, ChainKey, Linker, record_targets
from .checkpoint import Checkpoint

__all__ = ["Verification", "walk"]

_COLUMNS = ("occurred_at", "action", "actor_id", "target_id", "group", "idempotency_key")
_PROGRESS_EVERY = 10_000


@dataclass(frozen=True, slots=True)
class Verification:
    """What :meth:`AuditStore.verify` found; true when the store is intact.

    ``bad_row`` is the number (``seq``) of the first row that fails, ``0``
    when the chain head itself is missing or edited, and ``None`` when the
    store is intact or the problem is not one row's (the file is damaged, an
    index was dropped, the key does not match). ``reason`` says what is
    wrong (empty when intact); ``rows`` is how many rows were checked and
    found intact; ``keyed`` whether the chain is keyed (HMAC); ``base`` the last
    row pruned from the chain (0 if none was: the rows checked are
    ``base + 1`` to ``base + rows``). ``pending`` counts committed events not
    chained yet (a PostgreSQL store's writes inside callers' transactions,
    chained within moments): not a problem.
    """

    rows: int
    bad_row: int | None = None
    reason: str = ""
    keyed: bool = False
    pending: int = 0
    base: int = 0

    @property
    def ok(self) -> bool:
        """Whether every row, the chain head and the file are intact."""
        return self.bad_row is None and not self.reason

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            pruned = f" (rows 1-{self.base} pruned)" if self.base else ""
            waiting = f" ({self.pending} pending)" if self.pending else ""
            return f"intact: {self.rows} rows{pruned}{waiting}"
        if self.bad_row is None:
            return self.reason
        where = "chain head" if self.bad_row == 0 else f"row {self.bad_row}"
        return f"{where}: {self.reason}"


def _rows_named(first: int, last: int) -> str:
    return f"row {first}" if first == last else f"rows {first}-{last}"


class _TargetIndex:
    """The target index read alongside the rows, both in ``seq`` order."""

    def __init__(self, rows: Iterator[TargetRow]) -> None:
        self._rows = rows
        self._next: TargetRow | None = next(rows, None)

    def take(self, seq: int) -> tuple[set[tuple[str, str]], int | None]:
        """The entries of row ``seq``, and the row of an entry before it (no such row)."""
        orphan = None
        found: set[tuple[str, str]] = set()
        while self._next is not None and self._next[0] <= seq:
            entry_seq, target_id, occurred_at = self._next
            if entry_seq < seq and orphan is None:
                orphan = entry_seq
            elif entry_seq == seq:
                found.add((target_id, occurred_at))
            self._next = next(self._rows, None)
        return found, orphan

    def rest(self) -> int | None:
        """The row of an entry after the last row, if any."""
        return None if self._next is None else self._next[0]


def _seal_mismatch(snapshot: Snapshot, key: ChainKey | None, where: str) -> str:
    """Why ``key`` cannot verify this chain ("" if it can); raise if a key is needed."""
    seal = snapshot.seal()
    if seal is None:
        if key is None:
            return ""
        return ("the chain is not keyed, yet a key was given: the store was made without "
                "one, or its key seal was removed")
    if key is None:
        raise AuditConfigError(
            f"{where}: the chain is keyed (HMAC-SHA256, key id {seal.key_id}): verifying it "
            f"needs the key (key= or the {KEY_ENV} environment variable)"
        )
    if key.id != seal.key_id:
        return (f"the chain is keyed with key id {seal.key_id}, not the given key's "
                f"({key.id}): a wrong key, or the seal was edited")
    return ""


def walk(
    snapshot: Snapshot,
    key: ChainKey | None,
    *,
    where: str,
    against: Checkpoint | None = None,
    progress: Callable[[int], None] | None = None,
) -> Verification:
    """Check every row of ``snapshot``, its head, and ``against`` (see the module)."""
    base = snapshot.base()
    result = _walk(snapshot, key, base, where=where, against=against, progress=progress)
    if base is not None:
        result = replace(result, base=base.seq)
    pending = snapshot.pending()
    return replace(result, pending=pending) if pending else result


def _walk(
    snapshot: Snapshot,
    key: ChainKey | None,
    base: ChainBase | None,
    *,
    where: str,
    against: Checkpoint | None,
    progress: Callable[[int], None] | None,
) -> Verification:
    mismatch = _seal_mismatch(snapshot, key, where)
    if mismatch:
        return Verification(0, None, mismatch)
    if against is not None and against.mac is not None:
        if key is None:
            raise AuditConfigError(
                f"{where}: the checkpoint is signed: checking it needs the store's key "
                f"(key= or the {KEY_ENV} environment variable)"
            )
        if not against.signed_by(key):
            return Verification(
                0, None, "the checkpoint's MAC does not match the key: it was forged or "
                "edited, or belongs to another store",
            )
    if against is not None and against.seq == 0 and against.hash != GENESIS_HASH:
        return Verification(0, 0, "the checkpoint names row 0 with a hash other than genesis")
    start = 0 if base is None else base.seq
    if against is not None and base is not None and against.seq <= base.seq:
        problem = _before_base(against, base)
        if problem:
            return Verification(0, None, problem, snapshot.seal() is not None)
        against = None  # the checkpoint is the base itself: nothing more to check
    seal = snapshot.seal()
    linker = Linker(seal, key, where)
    keyed = seal is not None
    head = snapshot.head()
    # The target index is compared as a whole: an order-free sum over its entries,
    # against the same sum over what the records say; only when they differ is it
    # walked row by row, to name the first row whose entries are wrong.
    indexed = snapshot.targets(ordered=False) is not None
    expected_sum = expected_entries = 0
    counted = snapshot.activity("hour") is not None  # compared the same way
    activity_sum = 0
    previous = GENESIS_HASH if base is None else base.hash
    expected = start + 1
    link = linker.link
    loads = json.loads
    for seq, *columns, record, digest in snapshot.rows():
        checked = expected - 1 - start
        if seq != expected:
            missing = _rows_named(expected, seq - 1)
            return Verification(checked, expected, f"{missing} missing (deleted)", keyed)
        if not isinstance(record, str) or not hmac.compare_digest(
            link(seq, previous, record), str(digest)
        ):
            return Verification(
                checked, seq,
                "hash mismatch: the row was edited, or a row before it was deleted or moved",
                keyed,
            )
        try:
            data = loads(record)
            stored = (data["occurred_at"], data["action"], data["actor_id"],
                      data["target_id"], data["group"], data["idempotency_key"])
            ids = record_targets(data)
        except (ValueError, KeyError, TypeError, RecursionError):
            return Verification(checked, seq, "the hashed record is not a valid event", keyed)
        if tuple(columns) != stored:
            return Verification(checked, seq, _edited_column(columns, stored), keyed)
        if indexed:
            occurred_at = stored[0]
            for target_id in ids:
                expected_sum += hash((seq, target_id, occurred_at))
            expected_entries += len(ids)
        if counted:
            activity_sum += hash((stored[0][:13], stored[4], stored[1]))
        if against is not None and seq == against.seq and digest != against.hash:
            return Verification(
                checked, seq,
                f"hash differs from the checkpoint of {_when(against)}: this row or rows "
                "before it were rewritten",
                keyed,
            )
        previous = digest
        expected += 1
        if progress is not None and seq % _PROGRESS_EVERY == 0:
            progress(seq)
    last = expected - 1
    head_problem = _check_head(head, last, previous)
    if head_problem:
        rows, bad_row, reason = head_problem
        return Verification(rows - start, bad_row, reason, keyed)
    if indexed and _index_sum(snapshot) != (expected_sum, expected_entries):
        bad_row, reason = _first_bad_target_row(snapshot)
        return Verification(min(last, bad_row - 1) - start, bad_row, reason, keyed)
    if counted:
        problem = _activity_problem(snapshot, activity_sum, last - start)
        if problem:
            return Verification(last - start, None, problem, keyed)
    if against is not None and last < against.seq:
        return Verification(
            last - start, last + 1,
            f"{_rows_named(last + 1, against.seq)} missing: the checkpoint of "
            f"{_when(against)} names row {against.seq} (cut off the end)", keyed,
        )
    if seal is not None and last < seal.keyed_from - 1:
        return Verification(
            last - start, last + 1,
            f"{_rows_named(last + 1, seal.keyed_from - 1)} missing: the chain was keyed "
            f"after row {seal.keyed_from - 1} (cut off the end)", keyed,
        )
    expected_mac = linker.head_mac(last, previous, base)
    if expected_mac is not None and not hmac.compare_digest(
        expected_mac, seal.head_mac if seal else ""
    ):
        return Verification(
            last - start, 0, "its MAC does not match: the head or the prune base was moved "
            "(rows cut off either end, or rewritten), or the seal was edited", keyed,
        )
    if progress is not None:
        progress(last)
    return Verification(last - start, keyed=keyed)


def _before_base(against: Checkpoint, base: ChainBase) -> str:
    """Why a checkpoint at or before the base of a pruned chain fails ("" if it holds)."""
    if against.seq == base.seq:
        if hmac.compare_digest(against.hash, base.hash):
            return ""
        return (f"the checkpoint of {_when(against)} names row {against.seq} with another hash "
                "than the prune base records: rows up to it were rewritten")
    return (f"the checkpoint names row {against.seq}, but rows up to {base.seq} were pruned "
            f"(on {base.pruned_at[:10]}): verify the archive they were moved to against it")


def _activity_problem(snapshot: Snapshot, row_sum: int, rows: int) -> str:
    """Why the activity counts disagree with the rows ("" if they agree).

    Compared as order-free sums, like the target index: each count adds
    ``events * hash(bucket, group, action)``.
    """
    hour_sum = hour_total = roll_sum = 0
    for hour, group, action, events in snapshot.activity("hour") or ():
        hour_sum += events * hash((hour, group, action))
        roll_sum += events * hash((hour[:10], group, action))
        hour_total += events
    if (hour_sum, hour_total) != (row_sum, rows):
        return (f"the activity counts per hour were edited: they count {hour_total} events "
                f"in other hours, groups or actions than the {rows} rows")
    day_sum = 0
    for day, group, action, events in snapshot.activity("day") or ():
        day_sum += events * hash((day, group, action))
    if day_sum != roll_sum:
        return "the activity counts per day were edited: they disagree with the counts per hour"
    return ""


def _edited_column(columns: list[Any], stored: tuple[Any, ...]) -> str:
    for name, column, value in zip(_COLUMNS, columns, stored, strict=True):
        if column != value:
            return f"column {name} was edited (the hashed event says {value!r})"
    return "a column was edited"


def _index_sum(snapshot: Snapshot) -> tuple[int, int]:
    total = entries = 0
    for seq, target_id, occurred_at in snapshot.targets(ordered=False) or ():
        total += hash((seq, target_id, occurred_at))
        entries += 1
    return total, entries


def _first_bad_target_row(snapshot: Snapshot) -> tuple[int, str]:
    """The first row whose target entries differ from its record, and how."""
    entries = _TargetIndex(iter(snapshot.targets(ordered=True) or ()))
    for seq, *_, record, _digest in snapshot.rows():
        data = json.loads(record)  # parsed once already: it is valid
        found, orphan = entries.take(seq)
        if orphan is not None:
            return orphan, "in the target index, but there is no such row (inserted)"
        wanted = {(target_id, data["occurred_at"]) for target_id in record_targets(data)}
        if found != wanted:
            return seq, (f"the target index was edited (it has {sorted(found)!r}; "
                         f"the hashed event says {sorted(wanted)!r})")
    rest = entries.rest()
    assert rest is not None  # the sums differ, so some entry is wrong
    return rest, "in the target index, but there is no such row (inserted)"


def _when(checkpoint: Checkpoint) -> str:
    return format_timestamp(checkpoint.at)[:19] + "Z"


def _check_head(
    head: tuple[int, str] | None, last: int, previous: str
) -> tuple[int, int, str] | None:
    """``(rows, bad_row, reason)`` if the head disagrees with the last row."""
    if head is None:
        return last, 0, "missing (deleted)"
    head_seq, head_hash = head
    if head_seq > last:
        return last, last + 1, f"{_rows_named(last + 1, head_seq)} missing (cut off the end)"
    if head_seq < last:
        return (head_seq, head_seq + 1,
                "added after the chain head (inserted behind the store's back)")
    if head_hash != previous:
        return last, 0, f"hash does not match row {last} (edited)"
    return None
