"""The poller's two steps: `check` a batch until it ends, then `collect` its results.

Results are streamed in chunks from the cursor the state machine passes in; each chunk is kept in
S3 as the API sent it and settled (see `results`). When the time budget is spent, the cursor goes
back to the state machine, which calls `collect` again: no invocation holds a whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from . import batches, clock
from .completions import Topic
from .errors import TransientError
from .observability import logger
from .payloads import Payloads
from .results import CHUNK, Settler
from .settings import Settings
from .store import Store, batch_key


def next_wait(created_at: float, settings: Settings) -> int:
    """Poll less often as a batch ages, so a result waits at most ~10% of the batch's age."""
    age = max(0.0, clock.now() - created_at)
    return int(min(settings.poll_max_seconds, max(settings.poll_min_seconds, age * 0.1)))


@dataclass
class Poller:
    settings: Settings
    store: Store
    payloads: Payloads
    topic: Topic
    settler: Settler = field(init=False)

    def __post_init__(self) -> None:
        self.settler = Settler(self.settings, self.store, self.payloads, self.topic)

    @classmethod
    def from_settings(cls, settings: Settings) -> Poller:
        return cls(
            settings, Store(settings.table_name), Payloads(settings.bucket_name), Topic(settings.topic_arn)
        )

    def check(self, event: dict[str, Any]) -> dict[str, Any]:
        batch = batches.retrieve(event["batch_id"])
        ended = batch.processing_status == "ended"
        out = {
            "batch_id": batch.id,
            "ref": event["ref"],
            "processing_status": batch.processing_status,
            "ended": ended,
            "cursor": int(event.get("cursor", 0)),
            "wait_seconds": next_wait(batch.created_at.timestamp(), self.settings),
        }
        if ended:
            counts = batch.request_counts
            self.store.update(
                batch_key(event["ref"]),
                status="collecting",
                ended_at=clock.iso(batch.ended_at.timestamp()) if batch.ended_at else clock.iso(),
                api_counts={
                    k: int(getattr(counts, k)) for k in ("succeeded", "errored", "canceled", "expired")
                },
                updated_at=clock.iso(),
            )
        return out

    def collect(self, event: dict[str, Any], deadline: float) -> dict[str, Any]:
        """Collect results from `cursor` on until the stream ends or the time budget is spent."""
        batch_id, ref = event["batch_id"], event["ref"]
        record = self.store.get(batch_key(ref))
        if record is None:
            raise ValueError(f"no batch record for ref {ref}")
        cursor = int(event.get("cursor", 0))
        out = {**event, "cursor": cursor, "done": False}
        lines = batches.results(batch_id, skip=cursor)
        try:
            while clock.now() < deadline:
                chunk = list(islice(lines, CHUNK))
                if not chunk:
                    break
                self.settler.settle(record, chunk, results_key=f"results/{batch_id}/{cursor:09d}.jsonl")
                cursor += len(chunk)
                out["cursor"] = cursor
            else:
                return out  # budget spent: the state machine calls again from the cursor
        except TransientError as exc:
            if cursor == int(event.get("cursor", 0)):
                raise
            logger.warning(
                "results stream broke; resuming from cursor",
                extra={"batch_id": batch_id, "cursor": cursor, "error": str(exc)},
            )
            return out
        # The API returns one line per request; requests that got none are answered, never dropped.
        if cursor < int(record.get("request_count", 0)):
            self.settler.unresolved(record, "api_error", "no result returned for this request")
        self.store.update(
            batch_key(ref),
            status="collected",
            collected_at=clock.iso(),
            updated_at=clock.iso(),
            cursor=cursor,
            remove=("pending_tier", "pending_since"),
        )
        logger.info("batch collected", extra={"batch_id": batch_id, "results": cursor})
        out["done"] = True
        return out
