"""Review of promises a user sees break: requests of a tier a redeploy dropped, a rescue counted
twice, a killed submitter run keeping every other out, and what a batch that expired teaches the
relay about turnaround. Each test drives the stack (moto + the emulator) and fails while the
promise does not hold.

Faults are placed with the stack's hooks: `before(function, operation)` runs before an AWS call of a
function, `after(function, operation)` once it acted.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import TEST_PARAMETERS
from tests.helpers import request
from tests.integration.test_deadlines import once
from tests.integration.test_promises import emitted

pytestmark = pytest.mark.integration


# a tier the policy no longer names


def test_requests_of_a_tier_a_redeploy_dropped_are_answered(stack, emulator, capsys):
    """Requests wait in the `bulk` tier (6 hours, or 1,000 requests); a redeploy drops `bulk` from
    `TierPolicy`. The submitter used to flush and measure only the tiers the policy names: the
    requests were never answered, and no wait metric (so no alarm) saw them. They are flushed
    under the default tier's timing, counted (`OrphanedTierRequests`) and measured."""
    inbox = stack.subscribe()
    ids = [f"orphan{i}" for i in range(3)]
    stack.send([request(rid, tier="bulk") for rid in ids])
    stack.deliver()
    # When the stack is deployed again with a policy that no longer names `bulk`
    policy = {k: v for k, v in json.loads(TEST_PARAMETERS["TierPolicy"]).items() if k != "bulk"}
    stack.redeploy(TierPolicy=json.dumps(policy))
    capsys.readouterr()
    stack.tick()
    seen = emitted(capsys)
    assert seen["OrphanedTierRequests"] == 3, "requests of a dropped tier are not counted"
    assert "OldestPendingSeconds_bulk" in seen, "requests of a dropped tier are not measured"
    # Then, the default tier's max wait passed, each is answered once, by a batch
    stack.pump()
    got = once(stack, inbox, ids)
    assert {c["status"] for c in got.values()} == {"succeeded"}
    assert {c["route"] for c in got.values()} == {"batch"}
