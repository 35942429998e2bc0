"""Producers that offload large bodies with the SQS Extended Client libraries from PyPI, in both
pointer formats: awslabs' `amazon-sqs-extended-client` (current, and legacy with
`use_legacy_attribute`) and `sqs-extended-client` (legacy). Each request is stored once, from the
inbox bucket, on its first receive.

Both libraries are the module `sqs_extended_client` and patch `boto3.Session` when imported, so
each is installed in a directory of its own (once, from the package index) and imported only
inside `extended_client`, which puts boto3 back afterwards.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.helpers import stored_line
from tests.malformed import LEGACY, POINTER, ok

pytestmark = pytest.mark.integration

LIBRARIES = {
    "awslabs": ["amazon-sqs-extended-client==1.0.1"],
    "pypi": ["sqs-extended-client==0.0.11", "botoinator==0.0.6"],
}
HOME = Path(sys.prefix) / "extended-clients"


def installed(name: str) -> Path:
    """The library's own directory, installed there on first use (boto3 comes from this venv)."""
    target = HOME / name
    done = target / ".installed"
    if not done.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--upgrade",
                "--target",
                str(target),
                *LIBRARIES[name],
            ],
            check=True,
        )
        done.write_text(" ".join(LIBRARIES[name]))
    return target


def _drop_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in ("sqs_extended_client", "botoinator"):
            del sys.modules[name]


@contextmanager
def extended_client(name: str) -> Iterator[Any]:
    """boto3 as the library leaves it, for the duration of the block."""
    path = str(installed(name))
    saved = boto3.session.Session, boto3.Session, boto3.DEFAULT_SESSION
    _drop_modules()
    sys.path.insert(0, path)
    try:
        importlib.import_module("sqs_extended_client")
        yield boto3.session.Session()
    finally:
        sys.path.remove(path)
        _drop_modules()
        boto3.session.Session, boto3.Session, boto3.DEFAULT_SESSION = saved


@pytest.mark.parametrize(
    ("library", "legacy", "pointer_class", "size_attribute"),
    [
        ("awslabs", False, POINTER, "ExtendedPayloadSize"),
        ("awslabs", True, LEGACY, "SQSLargePayloadSize"),
        ("pypi", True, LEGACY, "SQSLargePayloadSize"),
    ],
)
def test_bodies_offloaded_by_the_extended_client_libraries_are_stored_once(
    aws_stack, library, legacy, pointer_class, size_attribute
):
    from batch_relay.settings import settings

    inbox = settings().inbox
    big = ok(f"offloaded-{library}-{int(legacy)}", system="a long policy document. " * 15_000)  # ~360 KB
    small = ok(f"inline-{library}-{int(legacy)}")

    # Given: a producer sending through the library, configured for the stack's inbox bucket
    with extended_client(library) as session:
        sqs = session.client("sqs")
        sqs.large_payload_support = inbox
        if library == "awslabs":
            sqs.use_legacy_attribute = legacy
        for body in (big, small):
            sqs.send_message(QueueUrl=aws_stack.queue_url(), MessageBody=json.dumps(body))

    # The queue holds the library's pointer for the large body (looked at, left visible)
    seen = aws_stack.sqs.receive_message(
        QueueUrl=aws_stack.queue_url(),
        MaxNumberOfMessages=10,
        VisibilityTimeout=0,
        MessageAttributeNames=["All"],
    )["Messages"]
    pointers = [json.loads(m["Body"]) for m in seen if m["Body"].startswith("[")]
    assert [p[0] for p in pointers] == [pointer_class] and pointers[0][1]["s3BucketName"] == inbox
    assert any(size_attribute in m.get("MessageAttributes", {}) for m in seen)

    # When: the buffer receives them
    assert aws_stack.deliver() == {"delivered": 2, "failed": 0}

    # Then: both stored once, the large one from the object the library wrote; nothing rejected
    table = boto3.resource("dynamodb").Table(aws_stack.physical["RequestTable"])
    for body in (big, small):
        item = table.get_item(Key={"pk": f"req#{body['request_id']}"})["Item"]
        assert item["status"] == "pending"
        assert stored_line(aws_stack.physical["PayloadBucket"], item)["params"] == body["params"]
    assert aws_stack.drain(aws_stack.inbox) == []
    dlq = aws_stack.sqs.get_queue_attributes(
        QueueUrl=aws_stack.queue_url("RequestDeadLetterQueue"), AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert dlq["Attributes"]["ApproximateNumberOfMessages"] == "0"
