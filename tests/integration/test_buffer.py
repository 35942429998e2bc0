"""The buffer handler on moto: validation, idempotency, partial batch failures, large bodies."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.conftest import TEST_PARAMETERS, load_event
from tests.helpers import request, stored_line

pytestmark = pytest.mark.integration


def sqs_event(bodies, receive_count="1"):
    return {
        "Records": [
            {
                "messageId": f"00000000-0000-4000-8000-{i:012d}",
                "receiptHandle": f"handle-{i}",
                "body": b if isinstance(b, str) else json.dumps(b),
                "attributes": {"ApproximateReceiveCount": receive_count, "SentTimestamp": "1700000000000"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:requests",
                "awsRegion": "us-east-1",
            }
            for i, b in enumerate(bodies)
        ]
    }


def item(stack, rid):
    table = boto3.resource("dynamodb").Table(stack.physical["RequestTable"])
    return table.get_item(Key={"pk": f"req#{rid}"}).get("Item")


def test_sample_event_is_buffered_with_its_duplicate_and_rejection(aws_stack):
    inbox = aws_stack.subscribe()
    answer = aws_stack.invoke("BufferFunction", load_event("buffer.json"))
    assert answer == {"batchItemFailures": []}
    assert item(aws_stack, "ticket-4711")["status"] == "pending"
    [rejected] = aws_stack.drain(inbox)
    assert rejected["status"] == "rejected" and rejected["request_id"] == "bad-stream-1"
    assert "stream" in rejected["error"]["message"]


def test_same_request_id_is_stored_once_and_redelivery_publishes_no_second_rejection(aws_stack):
    inbox = aws_stack.subscribe()
    first = request("dup-1", text="first")
    again = request("dup-1", text="second body, same id")
    bad = request("bad-1", tier="unknown-tier")
    aws_stack.invoke("BufferFunction", sqs_event([first, again, bad]))
    aws_stack.invoke("BufferFunction", sqs_event([first, bad], receive_count="2"))
    stored = item(aws_stack, "dup-1")
    line = stored_line(aws_stack.physical["PayloadBucket"], stored)
    assert line["custom_id"] == "dup-1" and line["params"]["messages"][0]["content"] == "first"
    assert [c["request_id"] for c in aws_stack.drain(inbox)] == ["bad-1"]


def test_a_message_without_id_is_keyed_by_its_sqs_message_id(aws_stack):
    event = sqs_event([request(None)])
    aws_stack.invoke("BufferFunction", event)
    assert item(aws_stack, event["Records"][0]["messageId"])["tier"] == "urgent"
    assert item(aws_stack, event["Records"][0]["messageId"])["pending_tier"] == "urgent"


def test_messages_without_a_usable_id_are_logged_not_published(aws_stack, capsys, caplog):
    inbox = aws_stack.subscribe()
    answer = aws_stack.invoke(
        "BufferFunction", sqs_event(["{broken", "[1, 2]", json.dumps(request("bad id"))])
    )
    assert answer == {"batchItemFailures": []}
    assert aws_stack.drain(inbox) == []
    assert caplog.text.count("request rejected without a usable id") == 3
    assert '"RejectedWithoutId":[3.0]' in capsys.readouterr().out


def test_a_transient_aws_fault_fails_only_its_record(aws_stack, monkeypatch):
    from batch_relay.store import Store

    real_add = Store.add

    def flaky(self, item):
        if item.get("request_id") == "throttled-1":
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
                "PutItem",
            )
        return real_add(self, item)

    monkeypatch.setattr(Store, "add", flaky)
    event = sqs_event([request("ok-1"), request("throttled-1"), request("ok-2")])
    answer = aws_stack.invoke("BufferFunction", event)
    assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["messageId"]}]}
    assert item(aws_stack, "ok-1") and item(aws_stack, "ok-2")
    assert item(aws_stack, "throttled-1") is None


def test_poison_messages_reach_the_dead_letter_queue_after_max_receives(aws_stack, monkeypatch):
    from batch_relay.store import Store

    def always_throttled(self, item):
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "no"}}, "PutItem")

    monkeypatch.setattr(Store, "add", always_throttled)
    aws_stack.send([request("poison-1")])
    for _ in range(int(TEST_PARAMETERS.get("MaxReceiveCount", aws_stack.params["MaxReceiveCount"])) + 1):
        aws_stack.deliver(rounds=1)
    sqs = aws_stack.sqs
    dlq = sqs.receive_message(QueueUrl=aws_stack.queue_url("RequestDeadLetterQueue"), MaxNumberOfMessages=10)
    assert [json.loads(m["Body"])["request_id"] for m in dlq.get("Messages", [])] == ["poison-1"]


def inbox_bucket() -> str:
    """The bucket producers offload bodies to (the relay's own when the stack names no inbox)."""
    from batch_relay.settings import settings

    return settings().inbox


def test_large_params_go_to_s3_and_sqs_extended_pointers_are_followed(aws_stack):
    s3 = boto3.client("s3")
    bucket = aws_stack.physical["PayloadBucket"]
    big = request("big-1", text="word " * 100_000)  # ~500 KB: over DynamoDB's item limit
    s3.put_object(Bucket=inbox_bucket(), Key="producer/big-1.json", Body=json.dumps(big).encode())
    pointer = [
        "software.amazon.payloadoffloading.PayloadS3Pointer",
        {"s3BucketName": inbox_bucket(), "s3Key": "producer/big-1.json"},
    ]
    answer = aws_stack.invoke("BufferFunction", sqs_event([pointer]))
    assert answer == {"batchItemFailures": []}
    stored = item(aws_stack, "big-1")
    # The line sits alone in its object (too large to share one), and the item only points at it.
    size = s3.head_object(Bucket=bucket, Key=stored["body_key"])["ContentLength"]
    assert stored["body_at"] == 0 and size == stored["body_len"] + 1 > 500_000
    line = stored_line(bucket, stored)
    assert line["params"]["messages"][0]["content"] == big["params"]["messages"][0]["content"]
    assert len(json.dumps(stored, default=str)) < 1024


def test_a_pointer_to_a_missing_object_is_rejected(aws_stack):
    inbox = aws_stack.subscribe()
    pointer = [
        "software.amazon.payloadoffloading.PayloadS3Pointer",
        {"s3BucketName": inbox_bucket(), "s3Key": "gone.json"},
    ]
    aws_stack.invoke("BufferFunction", sqs_event([pointer]))
    [c] = aws_stack.drain(inbox)
    assert c["status"] == "rejected" and "missing or unreadable object" in c["error"]["message"]


def test_an_inbox_object_no_try_can_read_is_rejected_on_its_first_receive(aws_stack):
    from botocore.exceptions import ClientError

    inbox = aws_stack.subscribe()
    boto3.client("s3").put_object(Bucket=inbox_bucket(), Key="sse-c.json", Body=json.dumps(request("ssec-1")))

    def encrypted_with_the_producers_key(function, operation):
        if function == "BufferFunction" and operation == "GetObject":
            error = {"Code": "InvalidRequest", "Message": "The object was stored using a form of SSE"}
            raise ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 400}}, operation)

    aws_stack.before = encrypted_with_the_producers_key
    pointer = [
        "software.amazon.payloadoffloading.PayloadS3Pointer",
        {"s3BucketName": inbox_bucket(), "s3Key": "sse-c.json"},
    ]
    answer = aws_stack.invoke("BufferFunction", sqs_event([request("ok-1"), pointer]))
    aws_stack.before = None
    assert answer == {"batchItemFailures": []}
    [c] = aws_stack.drain(inbox)
    assert c["status"] == "rejected" and "InvalidRequest" in c["error"]["message"]
    assert item(aws_stack, "ok-1")["status"] == "pending"


def test_records_past_the_parsing_time_go_back_alone(aws_stack, monkeypatch):
    from batch_relay import intake

    seen = {"n": 0}

    def spent_after_two(context):
        seen["n"] += 1
        return seen["n"] > 2

    monkeypatch.setattr(intake, "out_of_time", spent_after_two)
    event = sqs_event([request(f"t{i}") for i in range(5)])
    answer = aws_stack.invoke("BufferFunction", event)
    deferred = {f["itemIdentifier"] for f in answer["batchItemFailures"]}
    assert deferred == {r["messageId"] for r in event["Records"][2:]}
    assert [bool(item(aws_stack, f"t{i}")) for i in range(5)] == [True, True, False, False, False]


def test_a_refused_write_of_the_request_lines_stores_no_item_pointing_at_nothing(aws_stack):
    from botocore.exceptions import ClientError

    refused = []

    def refuse_the_lines(function, operation):
        if function == "BufferFunction" and operation == "PutObject" and not refused:
            refused.append(operation)
            error = {"Code": "SlowDown", "Message": "Please reduce your request rate."}
            raise ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 503}}, operation)

    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    aws_stack.before = refuse_the_lines
    event = sqs_event([request(f"w{i}") for i in range(3)])
    with pytest.raises(BatchProcessingError):  # every record failed: the whole batch goes back
        aws_stack.invoke("BufferFunction", event)
    aws_stack.before = None
    assert [item(aws_stack, f"w{i}") for i in range(3)] == [None, None, None]
    assert aws_stack.invoke("BufferFunction", event) == {"batchItemFailures": []}
    for i in range(3):
        stored = item(aws_stack, f"w{i}")
        body = boto3.client("s3").get_object(
            Bucket=aws_stack.physical["PayloadBucket"], Key=stored["body_key"]
        )
        assert body["ContentLength"] > 0
