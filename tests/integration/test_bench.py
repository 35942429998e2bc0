"""Small versions of the benchmark's measurements, checking counts (never times)."""

from __future__ import annotations

import json

import pytest

from benchmarks import buffer, cost, fullsize, pipeline

pytestmark = pytest.mark.integration

N = 200


@pytest.fixture(scope="module")
def runs():
    return pipeline.relay(N), pipeline.naive(N)


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
