"""`batch-relay teardown` against moto: a stack holding the relay's data resources as template.yaml
declares them (their DeletionPolicy included), filled with data, then removed or spared."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws
from relay_local.stack import load_template
from relay_ops import cli

pytestmark = pytest.mark.integration

NAME = "relay-to-remove"
DATA = ("RequestTable", "PayloadBucket", "InboxBucket")


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from batch_relay import aws as clients

    for key, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        clients.reset()
        yield
    clients.reset()


def data_stack(name: str = NAME) -> dict[str, str]:
    """The stack, with template.yaml's table and buckets (and the parameters they refer to) and a
    queue: logical id to physical id."""
    template = load_template()
    resources = {k: template["Resources"][k] for k in DATA}
    resources["RequestQueue"] = {"Type": "AWS::SQS::Queue"}
    used = {"RetentionDays", "InboxExpiryDays"}
    cfn = boto3.client("cloudformation")
    cfn.create_stack(
        StackName=name,
        TemplateBody=json.dumps(
            {"Parameters": {k: template["Parameters"][k] for k in used}, "Resources": resources}
        ),
    )
    return {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
    }


def fill(ids: dict[str, str]) -> None:
    """Data in each: requests in the table, objects in both buckets, the payload bucket versioned
    with two versions of a key and a delete marker."""
    s3 = boto3.client("s3")
    s3.put_bucket_versioning(Bucket=ids["PayloadBucket"], VersioningConfiguration={"Status": "Enabled"})
    for body in (b"first", b"second"):
        s3.put_object(Bucket=ids["PayloadBucket"], Key="messages/r-1.json", Body=body)
    s3.put_object(Bucket=ids["PayloadBucket"], Key="batches/b-1.jsonl", Body=b"{}")
    s3.delete_object(Bucket=ids["PayloadBucket"], Key="batches/b-1.jsonl")
    for i in range(3):
        s3.put_object(Bucket=ids["InboxBucket"], Key=f"bodies/{i}", Body=b"{}")
    table = boto3.resource("dynamodb").Table(ids["RequestTable"])
    for i in range(5):
        table.put_item(Item={"pk": f"req#r-{i}", "status": "succeeded"})


def left(ids: dict[str, str]) -> dict[str, bool]:
    """Which of the stack and its data resources still exist."""
    s3, dynamodb = boto3.client("s3"), boto3.client("dynamodb")
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    tables = set(dynamodb.list_tables()["TableNames"])
    live = {s["StackName"] for s in boto3.client("cloudformation").describe_stacks()["Stacks"]}
    return {
        "stack": NAME in live,
        "RequestTable": ids["RequestTable"] in tables,
        "PayloadBucket": ids["PayloadBucket"] in buckets,
        "InboxBucket": ids["InboxBucket"] in buckets,
    }


def versions(bucket: str) -> int:
    answer = boto3.client("s3").list_object_versions(Bucket=bucket)
    return len(answer.get("Versions", [])) + len(answer.get("DeleteMarkers", []))


def typed(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))


def test_the_template_keeps_the_table_and_the_payload_bucket() -> None:
    # What makes teardown needed: sam delete leaves these on purpose
    resources = load_template()["Resources"]
    assert {k for k in DATA if resources[k].get("DeletionPolicy") == "Retain"} == {
        "RequestTable",
        "PayloadBucket",
    }


def test_a_plain_stack_delete_leaves_the_kept_data(aws: None) -> None:
    # Given the stack with data in it
    ids = data_stack()
    fill(ids)
    # When CloudFormation alone deletes it (as sam delete does)
    boto3.client("cloudformation").delete_stack(StackName=NAME)
    # Then the table and the payload bucket outlive it, and the inbox, not empty, too
    assert left(ids) == {"stack": False, "RequestTable": True, "PayloadBucket": True, "InboxBucket": True}


def test_teardown_removes_the_stack_and_what_it_keeps(aws, monkeypatch, capsys) -> None:
    # Given the stack with data in each of its table and buckets
    ids = data_stack()
    fill(ids)
    assert versions(ids["PayloadBucket"]) == 4
    # ...whose table refuses a plain delete
    table = boto3.client("dynamodb").describe_table(TableName=ids["RequestTable"])["Table"]
    assert table["DeletionProtectionEnabled"] is True
    # When the operator types the stack's name back
    typed(monkeypatch, f"{NAME}\n")
    code = cli.main(["teardown", "--stack", NAME])
    out, err = capsys.readouterr()
    # Then everything is gone, and the plan named each kept resource before the question
    assert code == 0, err
    assert left(ids) == dict.fromkeys(("stack", *DATA), False)
    assert set(json.loads(out)["deleted"]) == {NAME, *(ids[k] for k in DATA)}
    plan = {
        line.split()[0]: line for line in err.splitlines() if line.split()[:1] and line.split()[0] in DATA
    }
    assert "kept by the stack on purpose" in plan["RequestTable"] and "4 objects" in plan["PayloadBucket"]
    assert "kept" not in plan["InboxBucket"] and "3 objects" in plan["InboxBucket"]
    assert f"Type the stack's name ({NAME})" in err


@pytest.mark.parametrize("answer", ["", "yes\n", f"{NAME}-other\n"])
def test_without_the_typed_name_nothing_is_deleted(aws, monkeypatch, capsys, answer) -> None:
    ids = data_stack()
    fill(ids)
    typed(monkeypatch, answer)
    assert cli.main(["--stack", NAME, "teardown"]) == 1
    assert "nothing deleted" in capsys.readouterr().err
    assert left(ids) == dict.fromkeys(("stack", *DATA), True)
    assert versions(ids["PayloadBucket"]) == 4 and versions(ids["InboxBucket"]) == 3


def test_the_dry_run_lists_and_deletes_nothing(aws, monkeypatch, capsys) -> None:
    ids = data_stack()
    fill(ids)
    typed(monkeypatch, f"{NAME}\n")  # even were it asked, it must not be
    assert cli.main(["teardown", "--dry-run", "--stack", NAME]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["resource", "type", "id", "holds"]
    for k in DATA:
        assert ids[k] in out
    assert left(ids) == dict.fromkeys(("stack", *DATA), True)


def test_after_a_sam_delete_teardown_finds_what_was_kept(aws, capsys) -> None:
    # Given a stack deleted by CloudFormation alone: its table and payload bucket remain
    ids = data_stack()
    fill(ids)
    boto3.client("s3").delete_objects(
        Bucket=ids["InboxBucket"], Delete={"Objects": [{"Key": f"bodies/{i}"} for i in range(3)]}
    )
    boto3.client("cloudformation").delete_stack(StackName=NAME)
    assert left(ids) == {"stack": False, "RequestTable": True, "PayloadBucket": True, "InboxBucket": False}
    # When teardown runs with --yes
    assert cli.main(["teardown", "--stack", NAME, "--yes"]) == 0
    # Then what the stack kept is gone too (moto lists a deleted stack's resources by making the
    # deleted ones anew, so more may have gone: the kept ones must be among them)
    assert left(ids) == dict.fromkeys(("stack", *DATA), False)
    assert {ids["RequestTable"], ids["PayloadBucket"]} <= set(json.loads(capsys.readouterr().out)["deleted"])


def test_a_stack_never_deployed_is_one_line_and_exit_2(aws, capsys) -> None:
    assert cli.main(["teardown", "--stack", "no-such-stack", "--yes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no stack 'no-such-stack'" in err
