"""`--region` and `--profile` reach every AWS call of a command (the relay's own store included),
and leave the process's default session as it was."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from relay_ops import cli

pytestmark = pytest.mark.integration

HOME, AWAY = "us-east-1", "eu-west-1"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    from batch_relay import aws as clients

    # A profile `away` whose region is AWAY, as `aws configure --profile away` writes it
    (tmp_path / "config").write_text(f"[profile away]\nregion = {AWAY}\n")
    (tmp_path / "credentials").write_text("[away]\naws_access_key_id = away\naws_secret_access_key = away\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", HOME)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    with mock_aws():
        clients.reset()
        yield
    clients.reset()


def relay_in(region: str) -> None:
    """A stack named `relay` in that region, whose table holds request r-1."""
    from batch_relay.store import request_key

    template = {
        "Resources": {
            "RequestTable": {
                "Type": "AWS::DynamoDB::Table",
                "Properties": {
                    "BillingMode": "PAY_PER_REQUEST",
                    "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
                    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                },
            }
        },
        "Outputs": {"RequestTableName": {"Value": {"Ref": "RequestTable"}}},
    }
    cfn = boto3.client("cloudformation", region_name=region)
    cfn.create_stack(StackName="relay", TemplateBody=json.dumps(template))
    [table] = [o["OutputValue"] for o in cfn.describe_stacks(StackName="relay")["Stacks"][0]["Outputs"]]
    boto3.resource("dynamodb", region_name=region).Table(table).put_item(
        Item={"pk": request_key("r-1"), "request_id": "r-1", "status": "pending", "tier": region}
    )


def status(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["status", "r-1", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_region_reaches_the_stack_and_the_table(aws, capsys):
    relay_in(AWAY)
    # Without --region the environment's region has no such stack
    code, _, err = status(capsys, "--stack", "relay")
    assert code == 2 and "relay" in err and err.count("\n") == 1
    # With it, the stack's outputs and then the table are read there, whichever side it is given
    for argv in (["--stack", "relay", "--region", AWAY], ["--region", AWAY, "--stack", "relay"]):
        code, out, err = status(capsys, *argv)
        assert code == 0, err
        assert json.loads(out)["tier"] == AWAY
    assert boto3.client("dynamodb").meta.region_name == HOME


def test_profile_brings_its_region(aws, capsys, monkeypatch):
    # As with the AWS CLI, AWS_DEFAULT_REGION would win over the profile's region: none here
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    relay_in(AWAY)
    before = boto3.DEFAULT_SESSION
    code, out, err = status(capsys, "--stack", "relay", "--profile", "away")
    assert code == 0, err
    assert json.loads(out)["tier"] == AWAY
    # The process's default session is what it was
    assert boto3.DEFAULT_SESSION is before


def test_region_wins_over_the_profile_s(aws, capsys, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    relay_in(HOME)
    code, out, err = status(capsys, "--profile", "away", "--stack", "relay", "--region", HOME)
    assert code == 0, err
    assert json.loads(out)["tier"] == HOME


def test_an_unknown_profile_is_one_line_and_exit_2(aws, capsys):
    code, _, err = status(capsys, "--stack", "relay", "--profile", "nobody")
    assert code == 2 and err == "batch-relay: --profile nobody: no such profile in the AWS config\n"
