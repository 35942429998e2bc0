"""Closing: a record whose requests are answered by the relay itself (a request no batch can
take, a batch the API refused alone, a batch whose results expired), with its recorded error.
Its recovery is the same step again: answering skips the requests already answered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import clock
from .budget import Budget
from .lifecycle import CLOSE, CLOSED, Batch, BatchRecord, move
from .runs import Run
from .store import batch_key


@dataclass
class Closing:
    run: Run

    def close(self, record: BatchRecord) -> None:
        """Answer whatever a record still holds with its recorded error, publish, and end it."""
        run = self.run
        assert record.close_error and record.close_message is not None and record.close_status
        run.settler.flush(record.ref)
        run.settler.unresolved(record, record.close_error, record.close_message)
        move(run.store, record.ref, CLOSED, Batch(record.close_status), updated_at=clock.iso())

    def close_with(self, record: BatchRecord, error: str, message: str, end: Batch) -> None:
        """Record why a batch is answered by the relay and how it ends, then close it."""
        fields: dict[str, Any] = {"close_error": error, "close_message": message[:1000]}
        fields["close_status"] = end.value
        if not move(self.run.store, record.ref, CLOSE, **fields):
            return  # moved on meanwhile (collected): whoever moved it answers its requests
        self.close(record.model_copy(update=fields))
        if end is Batch.REFUSED:
            # Never created, so nothing of what it committed was spent.
            committed, day = Budget.terms(record)
            self.run.budget.settle(batch_key(record.ref), committed, day, 0.0)

    def recover(self, record: BatchRecord, idle: float) -> bool:
        self.close(record)
        return True
