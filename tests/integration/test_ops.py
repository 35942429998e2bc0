"""The operator CLI against the local stack (moto) and the emulator."""

from __future__ import annotations

import json

import boto3
import pytest
from relay_local import ops

from tests.helpers import request

pytestmark = pytest.mark.integration


def flags(stack):
    return [
        "--queue-url", stack.queue_url(),
        "--dlq-url", stack.queue_url("RequestDeadLetterQueue"),
        "--table", stack.physical["RequestTable"],
    ]  # fmt: skip


def run(capsys, argv):
    capsys.readouterr()  # what the functions printed before
    code = ops.main(argv)
    out = capsys.readouterr()
    # Functions running in the background (pollers) print their own log and metric lines.
    mine = [
        line for line in out.out.splitlines(keepends=True) if not line.startswith(('{"_aws"', '{"level"'))
    ]
    return code, "".join(mine), out.err


def jsonl(tmp_path, lines):
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


def test_send_validates_locally_and_reports_rejected_lines(stack, emulator, capsys, tmp_path):
    lines = [request(f"op-{i}") for i in range(12)]
    lines.insert(2, {"request_id": "no-params"})
    lines.insert(5, "{broken")
    code, out, err = run(capsys, [*flags(stack), "send", "--quiet", jsonl(tmp_path, lines)])
    assert code == 1
    assert json.loads(out) == {"sent": 12, "rejected": 2}
    assert "line 3: params: Field required" in err and "line 6:" in err
    assert stack.deliver()["delivered"] == 12


def test_status_batches_and_report_after_a_run(stack, emulator, capsys, tmp_path):
    inbox = stack.subscribe()
    models = ["claude-haiku-4-5", "claude-sonnet-4-5"]
    sent = [request(f"rep-{i}", model=models[i % 2], tier=("urgent", "standard")[i % 2]) for i in range(10)]
    run(capsys, [*flags(stack), "send", "--quiet", jsonl(tmp_path, sent)])
    stack.pump()
    completions = stack.drain(inbox)

    code, out, _ = run(capsys, [*flags(stack), "status", "rep-3"])
    shown = json.loads(out)
    assert code == 0 and shown["status"] == "succeeded" and shown["batch_id"] in emulator.batch_ids()

    code, out, _ = run(capsys, [*flags(stack), "batches", "--format", "json"])
    assert {b["batch_id"] for b in json.loads(out)} == set(emulator.batch_ids())

    code, out, _ = run(capsys, [*flags(stack), "report", "--by", "tier,model", "--format", "json"])
    rows = json.loads(out)
    assert {(r["tier"], r["model"]) for r in rows} == {("urgent", models[0]), ("standard", models[1])}
    for key in ("batch_usd", "list_usd", "saved_usd"):
        assert sum(r[key] for r in rows) == pytest.approx(sum(c["cost"][key] for c in completions), abs=1e-5)
    assert sum(r["output_tokens"] for r in rows) == sum(c["usage"]["output_tokens"] for c in completions)

    code, out, _ = run(capsys, [*flags(stack), "report", "--by", "day", "--format", "csv"])
    assert out.splitlines()[0].startswith("day,requests,input_tokens")
    code, out, _ = run(capsys, [*flags(stack), "report"])
    assert "saved_usd" in out.splitlines()[0]


def test_cancel_reaches_the_api(stack, emulator, capsys, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "operator-key")
    emulator.latency_seconds = 30
    stack.send([request("c-1")])
    stack.deliver()
    stack.tick()
    [batch_id] = emulator.batch_ids()
    code, out, _ = run(capsys, ["cancel", batch_id])
    assert code == 0 and json.loads(out)["processing_status"] == "canceling"
    code, _, err = run(capsys, ["cancel", "msgbatch_nope"])
    assert code == 2 and err.count("\n") == 1 and "404" in err


def test_redrive_moves_dead_letters_back(stack, capsys):
    sqs = boto3.client("sqs")
    for i in range(13):
        sqs.send_message(
            QueueUrl=stack.queue_url("RequestDeadLetterQueue"), MessageBody=json.dumps(request(f"d{i}"))
        )
    code, out, _ = run(capsys, [*flags(stack), "redrive"])
    assert code == 0 and json.loads(out) == {"moved": 13}
    assert stack.deliver()["delivered"] == 13


def test_tail_prints_completions(stack, emulator, capsys):
    inbox = stack.subscribe()
    stack.send([request("tail-1"), request("tail-2")])
    stack.pump()
    code, out, _ = run(capsys, ["tail", "--from", inbox, "--once"])
    assert code == 0
    assert sorted(json.loads(line)["request_id"] for line in out.splitlines()) == ["tail-1", "tail-2"]


def test_stack_outputs_are_resolved_with_cloudformation(stack, capsys, tmp_path):
    template = {
        "Resources": {"Q": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {"RequestQueueUrl": {"Value": {"Ref": "Q"}}},
    }
    cfn = boto3.client("cloudformation")
    cfn.create_stack(StackName="relay-prod", TemplateBody=json.dumps(template))
    url = cfn.describe_stacks(StackName="relay-prod")["Stacks"][0]["Outputs"][0]["OutputValue"]
    code, out, _ = run(
        capsys, ["--stack", "relay-prod", "send", "--quiet", jsonl(tmp_path, [request("s-1")])]
    )
    assert code == 0 and json.loads(out)["sent"] == 1
    assert (
        boto3.client("sqs").get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]["ApproximateNumberOfMessages"]
        == "1"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status", "x"], "give --stack or --table"),
        (["--table", "t", "report", "--by", "week"], "--by accepts"),
        (["--stack", "missing", "batches"], "stack 'missing'"),
        (["send", "/no/such/file.jsonl"], "cannot read"),
    ],
)
def test_user_mistakes_are_one_line_and_non_zero(stack, capsys, argv, message):
    code, _, err = run(capsys, argv)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_unknown_request_is_a_clear_error(stack, capsys):
    code, _, err = run(capsys, [*flags(stack), "status", "nobody"])
    assert code == 2 and "no request 'nobody'" in err
