"""Starting a batch's poller (a Step Functions execution named for the batch), and restarting it
when it gave up or ended without finishing the batch: the recovery of `created`, `polling`,
`collecting` and `failed`. A batch is never given up while the API keeps its results."""

from __future__ import annotations

from dataclasses import dataclass

from . import clock, executions
from .closing import Closing
from .lifecycle import RESTART, START, Batch, BatchRecord, Transition, move
from .observability import MetricUnit, logger, metrics
from .runs import STALE_SECONDS, Run

# A poller that failed is restarted after 1 minute, doubling up to 6 hours between tries.
RESTART_BASE_SECONDS = 60
RESTART_CAP_SECONDS = 6 * 3600
# The API keeps results this long after a batch is created; until then a batch is never given up.
RESULTS_KEPT_SECONDS = 29 * 86400


def execution_name(batch_id: str, restarts: int) -> str:
    return batch_id if restarts == 0 else f"{batch_id}-r{restarts}"


@dataclass
class Starts:
    run: Run
    closing: Closing

    @property
    def machine(self) -> str:
        arn = self.run.settings.state_machine_arn
        assert arn, "STATE_MACHINE_ARN is required by the submitter"
        return arn

    def start(self, record: BatchRecord, restarts: int = 0, step: Transition = START) -> None:
        """Start (or restart) the batch's poller; its execution name is the batch id (-r<n>)."""
        run = self.run
        assert record.batch_id is not None
        name = execution_name(record.batch_id, restarts)
        wait = float(run.settings.poll_min_seconds)
        if record.rescue_at is not None:
            wait = min(wait, record.rescue_at - clock.now())
        payload = {"batch_id": record.batch_id, "ref": record.ref, "wait_seconds": max(0, int(wait))}
        if not executions.start(self.machine, name, payload):
            # The name is taken: fine if by this batch's own earlier try, a wrong adoption if not.
            owner = executions.input_of(self.machine, name).get("ref")
            if owner != record.ref:
                self.disown(record, f"execution {name} belongs to batch record {owner}")
                return
        move(
            run.store,
            record.ref,
            step,
            execution=name,
            restarts=restarts,
            updated_at=clock.iso(),
            remove=("restart_after",),
        )
        run.report["batches"].append(record.batch_id)
        run.report["requests"] += record.request_count

    def disown(self, record: BatchRecord, why: str) -> None:
        """A batch taken for ours that is not: our requests go back to their tier for a new batch."""
        n = self.run.settler.release(record, Batch.FOREIGN)
        logger.error(
            "a batch was wrongly adopted; requests released", extra={"ref": record.ref, "why": why, "n": n}
        )
        metrics.add_metric(name="WrongAdoptions", unit=MetricUnit.Count, value=1)

    def recover_created(self, record: BatchRecord, idle: float) -> bool:
        left = self.run.left(record, idle)
        if left is None:
            return False
        self.start(left, left.restarts)
        return True

    def recover_polling(self, record: BatchRecord, idle: float) -> bool:
        """An execution can end without recording it (stopped, a runtime error, the record's own
        write failing): a batch unchanged for longer than a poll gets its execution looked at."""
        if idle < self.run.settings.poll_max_seconds + STALE_SECONDS:
            return False
        name = record.execution or record.batch_id
        assert name is not None
        status = executions.status(self.machine, name)
        if status == "RUNNING":
            return False
        logger.warning(
            "a poller ended without finishing its batch", extra={"ref": record.ref, "execution": status}
        )
        return self.recover_failed(record.model_copy(update={"restart_after": None}), idle)

    def recover_failed(self, record: BatchRecord, idle: float) -> bool:
        created = clock.parse(record.created_at or record.submitted_at or record.claimed_at)
        if clock.now() - created >= RESULTS_KEPT_SECONDS:
            # The API no longer has its results: answer what is left (tried again if attempts remain).
            self.closing.close_with(
                record, "results_unavailable", "the batch's results are no longer available", Batch.ABANDONED
            )
            metrics.add_metric(name="BatchesAbandoned", unit=MetricUnit.Count, value=1)
            return True
        after = record.restart_after
        if after and clock.now() < clock.parse(after):
            return False
        # A poller may still run: one started by a run that died before recording it, or the one
        # a late, stale execution's failure record hid. Never start a second beside it.
        last = record.restarts
        assert record.batch_id is not None
        for name in dict.fromkeys([record.execution, execution_name(record.batch_id, last)]):
            if name and executions.status(self.machine, name) == "RUNNING":
                move(self.run.store, record.ref, RESTART, execution=name, updated_at=clock.iso())
                return True
        restarts = last + 1
        delay = min(RESTART_CAP_SECONDS, RESTART_BASE_SECONDS * 2 ** (restarts - 1))
        self.run.store.update_batch(
            record.ref, restart_after=clock.iso(clock.now() + delay), restarts=restarts
        )
        self.start(record, restarts, RESTART)
        metrics.add_metric(name="PollerRestarts", unit=MetricUnit.Count, value=1)
        return True
