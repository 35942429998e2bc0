"""Review of what a submitter run recovers at once from a run that failed: each test drives the
stack (moto + the emulator) into one way a promise of DESIGN.md can break, and fails while it
does.

Faults are placed with the stack's hooks, as in `test_deadline_faults`: `before(function,
operation)` runs before an AWS call of a function (raising refuses it), `after(function,
operation)` once it acted (raising there is an answer that never came back).
"""

from __future__ import annotations

import pytest

from tests.helpers import request
from tests.integration.test_review_leases import committed, records, throttled, to_morning

pytestmark = pytest.mark.integration


# the daily budget on the recovery path


def test_a_commitment_whose_answer_was_lost_is_not_made_twice(make_stack, emulator):
    """A run claims a request, uploads it (record `uploaded`, its upper bound as `budget_usd`) and
    commits that bound to the day's budget; the commitment applies, and its answer is lost (the
    run fails). The next run recovers the record at once (`_recover_uploaded`) and commits what
    its record does not say is committed. Were the budget item's update and the record's
    `budget_day` two writes, a run failing between them would leave a commitment no record names,
    made again by the recovery and never given back (the batch's settlement gives back one): the
    cap would hold the relay's tiers back with less than the cap spent or out. They are one
    transaction (`Store.commit`), so the record names the commitment whenever it applied."""
    stack = make_stack(DailyBudgetUSD="1")  # far above one request's bound
    to_morning(stack)
    stack.send([request("c1")])
    stack.deliver()
    lost: list[str] = []

    def after(function: str, operation: str) -> None:
        if function == "SubmitterFunction" and operation == "TransactWriteItems" and not lost:
            lost.append(operation)
            raise throttled(operation)  # applied; its answer never came back

    stack.after = after
    with pytest.raises(Exception, match=r"TransactWriteItems|Throttling|injected"):
        stack.tick()
    stack.after = None
    assert lost == ["TransactWriteItems"]
    [record] = records(stack).values()
    assert record["status"] == "uploaded" and record["budget_day"]
    one = float(record["budget_usd"])
    assert committed(stack) == pytest.approx(one, abs=2e-6)
    stack.tick()  # the next run: recovers the record and creates its batch
    assert len(emulator.batch_ids()) == 1
    twice = committed(stack)
    stack.settle()  # the batch ends: what it did not spend of its commitment is given back
    assert committed(stack) <= one + 2e-6, (
        f"the day's commitments said {twice:.6f} USD for one batch whose upper bound is {one:.6f} "
        f"USD; with the batch ended they say {committed(stack):.6f} USD, more than that bound: "
        "the second commitment is never given back"
    )
