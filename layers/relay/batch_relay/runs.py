"""What the phases of one submitter run share: the services, this run's hold on the `submitter`
lease, and its time budget. The submitter (`submitter.Submitter`) decides what happens and in
what order; the phases (`claiming`, `creating`, `starts`, `closing`, and `handoff` for realtime
records) do the work, each with the recovery of its own states beside its forward step."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from .budget import Budget
from .deadlines import Turnaround
from .handoff import Handoff
from .payloads import Bodies, Payloads
from .records import BatchRecord
from .results import Settler
from .settings import Settings
from .store import Lease, Store

# A batch left in one state longer than a submitter run may take was left by a crashed run.
STALE_SECONDS = 15 * 60
# Clocks of two invocations (and the API's) may disagree by this much; a lease outlives its run
# by as long, and a create's window is widened by it on both sides.
CLOCK_SKEW_SECONDS = 60
LEASE_MARGIN_SECONDS = CLOCK_SKEW_SECONDS
# The submitter lease lasts this long from its last renewal: a run that dies keeps the next
# runs out no longer. Renewed before a write that needs it once fewer than LEASE_AHEAD_SECONDS
# of it are left (less the skew): the longest a write that needs it takes (a page's claims).
LEASE_SECONDS = 120
LEASE_AHEAD_SECONDS = 30


def new_report() -> dict[str, Any]:
    return {"batches": [], "requests": 0, "reconciled": 0}


@dataclass
class Run:
    settings: Settings
    store: Store
    payloads: Payloads
    settler: Settler
    report: dict[str, Any] = field(default_factory=new_report)
    bodies: Bodies = field(init=False)
    turnaround: Turnaround = field(init=False)
    handoff: Handoff = field(init=False)
    budget: Budget = field(init=False)
    # When this run must have finished claiming, and sending creates.
    claim_until: float = field(default=float("inf"), init=False)
    create_until: float = field(default=float("inf"), init=False)
    # A batch made after a hold ends it, if the API answers it (see `Poller._finish`).
    after_hold: bool = field(default=False, init=False)
    # Set by a claim that stopped where the day's budget ran out.
    over_budget: bool = field(default=False, init=False)
    # This run's hold on the `submitter` lease, written on the records it starts.
    holder: str = field(default_factory=lambda: uuid.uuid4().hex, init=False)
    lease: Lease = field(init=False)

    def __post_init__(self) -> None:
        self.bodies = Bodies(self.payloads)
        self.turnaround = Turnaround(self.store, self.settings)
        self.handoff = Handoff(self.settings, self.store, self.payloads)
        self.budget = Budget(self.settings, self.store)
        self.lease = self.new_lease(self.holder)

    def new_lease(self, holder: str) -> Lease:
        self.holder = holder
        self.lease = Lease(
            self.store, "submitter", holder, LEASE_SECONDS, CLOCK_SKEW_SECONDS, LEASE_AHEAD_SECONDS
        )
        return self.lease

    def left(self, record: BatchRecord, idle: float) -> BatchRecord | None:
        """The record as it is, if the run that left it in its state is over; else None.

        This run holds the lease, so one that wrote the record under another hold has ended (it
        failed, or died and its lease ran out) or makes no more writes that need the lease (its
        lease ran out while it stalled: it renews before each, and stops once another run holds
        it); a record of unknown run is taken for over once it is stale. The work list is an
        index, which lags its table: a record listed in a state it has since left (its run went
        on, then ended) is acted on only as it is now."""
        if idle < STALE_SECONDS and record.run in (None, self.holder):
            return None
        fresh = self.store.batch(record.ref)
        if fresh is None or fresh.status != record.status:
            return None  # moved on: the next run sees it where it is
        return fresh
