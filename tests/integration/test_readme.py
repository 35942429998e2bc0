"""The README's snippets, run as a reader would run them, against the local stack: the Python
blocks marked `# readme: <name>` are executed as they stand, the AWS CLI commands are read for their
`--query` and `--message-body`, and the completion shown is held to the shape of a real one.

A CloudFormation stack named as the README's (`batch-relay`) holds the local stack's outputs, so
the snippets read them exactly as they would from a deployed stack.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import boto3
import jmespath
import pytest

from tests.helpers import request

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
STACK = "batch-relay"
COMPLETIONS_QUEUE = "batch-relay-completions"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def snippet(name: str) -> str:
    (found,) = [b for b in blocks("python") if f"# readme: {name}\n" in b]
    return found


def run(name: str) -> None:
    """Execute a README block in a namespace of its own, as `python snippet.py` would."""
    exec(compile(snippet(name), f"README.md ({name})", "exec"), {"__name__": "__main__"})


def commands() -> list[list[str]]:
    """Every command of the README's bash blocks as the shell splits it (continued lines and quotes
    across lines joined), each command substitution `$( )` a command of its own."""
    out: list[list[str]] = []
    for block in blocks("bash"):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines(keepends=True):
            pending += line
            try:
                words = shlex.split(re.sub(r"\$\((.*)\)", "substituted", pending), comments=True)
            except ValueError:  # a quote still open: the command goes on
                continue
            out += [shlex.split(inner) for inner in re.findall(r"\$\((.*)\)", pending)]
            if words:
                out.append(words)
            pending = ""
    return out


def option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


@pytest.fixture
def deployed(stack: Any) -> dict[str, str]:
    """The local stack's outputs, resolved from template.yaml, under a CloudFormation stack of the
    README's name; returns them."""
    outputs = {name: str(stack.resolve(spec["Value"])) for name, spec in stack.template["Outputs"].items()}
    template = {
        "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {name: {"Value": value} for name, value in outputs.items()},
    }
    boto3.client("cloudformation").create_stack(StackName=STACK, TemplateBody=json.dumps(template))
    return outputs


def shape(value: Any) -> Any:
    """The keys of a JSON value, all the way down (the first item standing for a list)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__ if isinstance(value, bool | str) or value is None else "number"


def test_the_readme_sends_a_request_and_its_consumer_reads_every_completion_once(
    stack: Any, deployed: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the README's subscription, its request sent in Python and with the AWS CLI's body, and
    # a completion too large for SNS
    run("subscribe")
    run("send-one")
    cli = [words for words in commands() if words[:3] == ["aws", "sqs", "send-message"]]
    (body,) = [option(words, "--message-body") for words in cli]
    assert body is not None
    stack.sqs.send_message(QueueUrl=deployed["RequestQueueUrl"], MessageBody=body)
    long = request("long-1", text="write at length [[emulate:long]]")
    long["params"]["max_tokens"] = 60_000
    stack.send([long])

    # When the relay answers them, and one completion is delivered twice (as a repeat would be)
    stack.pump()
    sqs = boto3.client("sqs")
    queue_url = sqs.get_queue_url(QueueName=COMPLETIONS_QUEUE)["QueueUrl"]
    bodies: list[str] = []
    while got := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages"):
        bodies += [m["Body"] for m in got]
        for m in got:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    real = {json.loads(b)["request_id"]: b for b in bodies}
    assert set(real) == {"ticket-4711", "ticket-4712", "long-1"}
    for b in [*bodies, real["ticket-4711"]]:
        sqs.send_message(QueueUrl=queue_url, MessageBody=b)
    capsys.readouterr()
    run("consume")

    # Then the consumer handled each request once, the large one through its S3 pointer
    printed = capsys.readouterr().out.splitlines()
    seen = {
        line.split()[0]: line
        for line in printed
        if line.split()[:1] in (["ticket-4711"], ["ticket-4712"], ["long-1"])
    }
    assert sum(line.startswith("ticket-4711 ") for line in printed) == 1
    assert set(seen) == {"ticket-4711", "ticket-4712", "long-1"}
    assert all(" succeeded " in line for line in seen.values()), seen
    assert json.loads(real["long-1"])["message"]["type"] == "s3_pointer"
    assert int(seen["long-1"].split()[2]) > 256 * 1024
    assert "Messages" not in sqs.receive_message(QueueUrl=queue_url)

    # And the completion the README shows is shaped as the real one for the same request
    shown = json.loads(_shown())
    published = json.loads(real["ticket-4711"])
    assert shape(shown) == shape(published), (
        f"the README's completion is stale; a real one:\n{real['ticket-4711']}"
    )
    for key in ("request_id", "status", "route", "tier", "model", "metadata", "attempts"):
        assert shown[key] == published[key], key


def _shown() -> str:
    """The README's completion: the JSON block that follows its subscription snippet."""
    text = README.read_text(encoding="utf-8")
    after = text[text.index("# readme: subscribe") :]
    return re.search(r"^```json\n(.*?)^```", after, flags=re.S | re.M)[1]  # type: ignore[index]


def test_every_query_in_the_readme_finds_what_it_reads(stack: Any, deployed: dict[str, str]) -> None:
    # The AWS CLI applies --query (JMESPath) to the operation's answer; here the same answer from moto.
    answers = {
        ("cloudformation", "describe-stacks"): lambda: boto3.client("cloudformation").describe_stacks(
            StackName=STACK
        ),
        ("secretsmanager", "create-secret"): lambda: boto3.client("secretsmanager").create_secret(
            Name="readme/anthropic-api-key", SecretString="sk-ant-readme"
        ),
    }
    queried = [w for w in commands() if w[:1] == ["aws"] and "--query" in w]
    assert len(queried) >= 3
    for words in queried:
        answer = answers[(words[1], words[2])]()
        found = jmespath.search(option(words, "--query") or "", answer)
        assert found, f"{' '.join(words)} finds nothing"
        if "OutputKey=='RequestQueueUrl'" in (option(words, "--query") or ""):
            assert found == [deployed["RequestQueueUrl"]]
