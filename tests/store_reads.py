"""Counting what a job reads from (and writes to) the SQLite store, so a saving in statements
cannot go unnoticed."""

from __future__ import annotations

from extmsg.store.base import Store
from extmsg.store.sqlite import SqliteStore

__all__ = ["Reads", "Statements"]


class Reads:
    """Counts the statements run on the SQLite store's connection from now on outside its
    writes' own transactions: the point reads of the store's callers (which run on that
    connection, between its commits)."""

    def __init__(self, store: Store) -> None:
        assert isinstance(store, SqliteStore)
        assert store._writer is not None
        self.statements: list[str] = []
        store._writer.connection.set_trace_callback(self.statements.append)

    @property
    def count(self) -> int:
        reads, writing = 0, False
        for sql in self.statements:
            verb = sql.split(None, 1)[0].upper()
            if verb == "BEGIN":
                writing = True
            elif verb in ("COMMIT", "ROLLBACK"):
                writing = False
            elif verb == "SELECT" and not writing:
                reads += 1
        return reads


class Statements:
    """Counts the statements the SQLite store's connection runs from now on, by their first
    word, leaving out those that begin, end or divide transactions: what the store's calls
    cost, whatever batches they share."""

    CONTROL = frozenset({"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"})

    def __init__(self, store: Store) -> None:
        assert isinstance(store, SqliteStore)
        assert store._writer is not None
        self.statements: list[str] = []
        self._connection = store._writer.connection
        self._connection.set_trace_callback(self.statements.append)

    def stop(self) -> None:
        self._connection.set_trace_callback(None)

    def by_verb(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for sql in self.statements:
            verb = sql.split(None, 1)[0].upper()
            if verb not in self.CONTROL:
                counts[verb] = counts.get(verb, 0) + 1
        return counts
