"""Small versions of the benchmark's measurements, checking counts (never times)."""

from __future__ import annotations

import json

import pytest

from benchmarks import buffer, cost, fullsize, pipeline

pytestmark = pytest.mark.integration

N = 200


@pytest.fixture(scope="module")
def runs():
    return pipeline.relay(N, logs=True), pipeline.naive(N)


def test_calls_per_request_stay_within_target_and_below_the_naive_relay(runs):
    relay, naive = runs
    calls = relay["calls"]
    # One conditional put per request at intake; claims and results are read and written in bulk.
    # + the batch's own item, the record of its batch id, the submitter's and the collector's
    # leases, and the turnaround sample its end gives
    assert calls["dynamodb.PutItem"] == N + 5
    assert calls["dynamodb.UpdateItem"] <= 10  # the batch's item only
    # Claim: a consistent re-read and batched writes; results: the same again.
    assert calls["dynamodb.BatchGetItem"] == 2 * N // 100 and calls["dynamodb.BatchWriteItem"] == 2 * N // 25
    assert calls["sns.PublishBatch"] == N // 10
    # Request lines: one object per buffer invocation (100 records), read once by the submitter.
    assert calls["s3.GetObject"] <= N // 100 + 2
    # The outbox adds a marker a publish call (0.1 a request) and the claim journal's read at collect;
    # deadlines add a few calls a run and a poll (the deadline range of each tier, the batch's
    # record at each check, its turnaround sample), which 200 requests share.
    assert relay["calls_total"] / N <= 1.6
    assert naive["calls_total"] == 5 * N
    assert naive["calls_total"] / relay["calls_total"] >= 1.5


def test_write_units_are_metered_per_write_and_index(runs):
    relay, naive = runs
    # The naive relay has no index and small items: one unit a write, four writes a request.
    assert naive["write_units"] == 4 * N
    # Items under 1 KB: put (item + index entry), claim (item + index removal), final write (item);
    # then the batch's own item, a few writes per batch and one per 100 results.
    assert 5 * N <= relay["write_units"] <= 5 * N + 30


def test_the_modelled_bill_stays_under_fifteen_dollars_a_million(runs):
    relay, _ = runs
    bill = cost.per_million(relay)
    assert relay["item_bytes"] < 1024 and relay["line_bytes"] > relay["prompt_bytes"]
    assert 0 < bill["total"] < 15
    assert bill["dynamodb"] > 0 and bill["lambda"] > 0 and bill["sns"] == pytest.approx(0.5)
    assert cost.savings_per_million()["saved_usd"] / bill["total"] >= 100
    # What the functions printed is priced as CloudWatch Logs would ingest it, metrics among it.
    assert relay["log_bytes"] > 0 and bill["cloudwatch_logs"] > 0 and bill["xray"] > 0
    assert {"RequestsReceived", "Results_succeeded", "BatchCostUSD"} <= set(relay["metric_names"])


def test_a_stack_at_zero_traffic_costs_its_schedule_and_its_cloudwatch():
    idle = pipeline.idle(2)
    floor = cost.per_month_at_zero(idle)
    # An idle run takes and gives back the lease, and finds nothing to claim: no batch, no publish.
    assert idle["invocations"] == {"SubmitterFunction": 2}
    assert idle["calls"]["dynamodb.PutItem"] == 2 and idle["calls"]["dynamodb.DeleteItem"] == 2
    assert not any(op.startswith(("sns.", "states.", "s3.")) for op in idle["calls"])
    # Every minute, 730 hours a month; 13 alarms, one of them reading five metrics.
    assert cost.schedule_runs_a_month() == 43_800 and cost.alarm_metrics() == 17
    assert floor["cloudwatch_alarms"] == pytest.approx(1.7) and floor["cloudwatch_dashboard"] == 3.0
    assert "OldestPendingRatio" in idle["metric_names"] and floor["cloudwatch_metrics"] > 0
    assert 0 < floor["submitter_lambda"] < floor["total"] < 15


def test_every_request_passes_through_one_batch_and_one_poller(runs):
    relay, _ = runs
    assert relay["batches"] == 1 and relay["invocations"]["SubmitterFunction"] == 1
    assert relay["transitions"] == pytest.approx(6, abs=2)


def test_the_submitter_streams_the_batch_body_it_uploaded():
    got = fullsize.submitter(2000, 500)
    lines = 2000 * len(
        json.dumps(
            {"custom_id": "bench-000000", "params": pipeline.params(0, 500)}, separators=(",", ":")
        ).encode()
    )
    # {"requests":[ + lines joined by commas + ]}
    assert abs(got["bytes"] - (lines + 2000 - 1 + 15)) < 2000 * 4
    assert got["requests"] == 2000


def test_the_collector_reads_every_result():
    got = fullsize.collector(1000)
    assert got["results"] == 1000


def test_the_buffer_stores_large_bodies_and_refuses_dense_ones_in_one_batch():
    stored = buffer.run(4, "valid", size=2 * 1024 * 1024)
    assert (stored["records"], stored["stored"], stored["failures"]) == (4, 4, 0)
    refused = buffer.run(4, "dense", size=2 * 1024 * 1024)
    assert (refused["stored"], refused["rejected"], refused["failures"]) == (0, 4, 0)
    assert 0 < stored["base_rss_mb"] <= stored["peak_rss_mb"]


@pytest.fixture(scope="module")
def day():
    from benchmarks import deadlines

    # 30 requests over an hour and a half of simulated time, batches of 5 minutes or 2 hours: the
    # relay and always-batch side by side, each in a process of its own.
    return deadlines.measure(deadlines.small())


def test_a_mixed_deadline_day_is_answered_once_and_by_every_deadline(day):
    relay = day["relay"]
    assert relay["answered"] == relay["requests"] and relay["answered_twice"] == 0
    assert relay["statuses"] == {"succeeded": relay["requests"]}
    assert relay["with_deadline"] > 0 and relay["late"] == 0 and relay["on_time_share"] == 1.0
    assert relay["deadline_echo_mismatches"] == 0 and relay["pollers_left"] == 0
    # Both ways out of the batch route were taken, and the realtime calls the API answered are
    # exactly the realtime completions.
    assert relay["realtime_at_claim"] > 0 and relay["rescued"] > 0
    assert relay["realtime_calls"] == relay["by_route"]["realtime"]
    # A rescued completion states the batch price of its batch copy whenever that batch ran it
    # (read back from the batch's results, or estimated from the same usage before they came), and
    # leaves it out only once its batch has ended and been collected without running it; no other
    # completion states one.
    assert relay["both_ways_missing"] == 0 and relay["both_ways_not_rescued"] == 0
    assert relay["both_ways_left_out_early"] == 0
    assert relay["ran_twice_count"] <= relay["both_ways_count"] <= relay["rescued"]
    assert relay["both_ways_ran_count"] == relay["ran_twice_count"]
    assert relay["both_ways_ran_usd"] == pytest.approx(relay["ran_twice_usd"], abs=1e-6)
    # Here no rescued request's answer comes after its batch is collected: the realtime queue is
    # delivered at the moment of the rescue, before the simulated clock lets the batch's poller
    # check it again, and the emulator neither fails nor limits realtime calls. So every rescued
    # completion states one (the estimate, when its batch had not run it yet).
    assert relay["both_ways_left_out"] == 0 and relay["both_ways_count"] == relay["rescued"]
    # The simulation skipped only runs of the schedule that had nothing to do.
    assert relay["unpredicted_runs"] == 0 and day["always_batch"]["unpredicted_runs"] == 0


def test_always_batch_misses_deadlines_the_relay_keeps(day):
    batch = day["always_batch"]
    assert batch["answered"] == batch["requests"] and batch["by_route"]["realtime"] == 0
    assert batch["realtime_calls"] == 0 and batch["with_deadline"] == day["relay"]["with_deadline"]
    assert batch["late"] > 0


def test_the_discount_kept_lies_between_always_realtime_and_always_batch(day):
    relay, batch = day["relay"], day["always_batch"]
    # The same answers in both runs: the same usage, so the same list and batch prices.
    assert batch["list_usd"] == pytest.approx(relay["list_usd"], rel=1e-6)
    assert batch["billed_usd"] == pytest.approx(relay["batch_price_usd"], rel=1e-4)
    assert batch["billed_usd"] < relay["billed_usd"] < day["always_realtime_usd"]
    assert 0 < day["discount_kept_share"] < 1
    # What the completions say was paid, less the both-ways estimates for batch copies that never
    # ran, is what the API billed.
    unran = relay["both_ways_usd"] - relay["ran_twice_usd"]
    assert relay["paid_usd"] - unran == pytest.approx(relay["billed_usd"], abs=1e-5)
