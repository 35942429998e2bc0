"""The user's pages stay true to the repository: the README's length, every relative link (and its
anchor), the parameter reference against template.yaml, and the deployer's policy against the
resource types the template declares."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from relay_local.stack import load_template

from scripts import parameters

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "README.md", *sorted(ROOT.glob("docs/*.md"))]
POLICY = ROOT / "docs" / "deployer-policy.json"
# Links in Markdown, not images' and not inside code spans or blocks (stripped first).
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# The calls CloudFormation makes (as the deployer) to create each resource type of the template;
# for SAM's types, those of the resources the transform makes of them.
CREATES = {
    "AWS::Serverless::Function": {
        "lambda:CreateFunction",
        "iam:CreateRole",
        "iam:PutRolePolicy",
        "iam:PassRole",
    },
    "AWS::Serverless::LayerVersion": {"lambda:PublishLayerVersion"},
    "AWS::Serverless::StateMachine": {
        "states:CreateStateMachine",
        "iam:CreateRole",
        "iam:PassRole",
        "logs:CreateLogDelivery",
    },
    "AWS::SQS::Queue": {"sqs:CreateQueue"},
    "AWS::SQS::QueuePolicy": {"sqs:SetQueueAttributes"},
    "AWS::DynamoDB::Table": {
        "dynamodb:CreateTable",
        "dynamodb:UpdateContinuousBackups",
        "dynamodb:UpdateTimeToLive",
    },
    "AWS::S3::Bucket": {"s3:CreateBucket", "s3:PutLifecycleConfiguration", "s3:PutEncryptionConfiguration"},
    "AWS::S3::BucketPolicy": {"s3:PutBucketPolicy"},
    "AWS::SNS::Topic": {"sns:CreateTopic"},
    "AWS::SNS::TopicPolicy": {"sns:SetTopicAttributes"},
    "AWS::IAM::Policy": {"iam:PutRolePolicy"},
    "AWS::Logs::LogGroup": {"logs:CreateLogGroup", "logs:PutRetentionPolicy"},
    "AWS::CloudWatch::Alarm": {"cloudwatch:PutMetricAlarm"},
    "AWS::CloudWatch::Dashboard": {"cloudwatch:PutDashboard"},
}
# Event sources of a SAM function, and function settings, that make resources of their own.
EVENTS = {"SQS": {"lambda:CreateEventSourceMapping"}, "Schedule": {"events:PutRule", "events:PutTargets"}}
SETTINGS = {
    "ReservedConcurrentExecutions": {"lambda:PutFunctionConcurrency"},
    "EventInvokeConfig": {"lambda:PutFunctionEventInvokeConfig"},
    # Tracing attaches AWS's X-Ray write policy to the function's role.
    "Tracing": {"iam:AttachRolePolicy"},
}


def _prose(text: str) -> str:
    """The page without fenced code blocks and code spans, whose brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings, and explicit ones."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    out = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
        out.add(slug.replace(" ", "-"))
    return out


def _links() -> list[tuple[Path, str]]:
    return [
        (page, target)
        for page in PAGES
        for target in LINK.findall(_prose(page.read_text(encoding="utf-8")))
        if not re.match(r"[a-z]+:", target)  # http(s), mailto
    ]


def test_the_readme_is_under_three_hundred_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) < 300


def test_the_pages_link_to_something():
    # The link reader must see the README's links, or the next test checks nothing.
    assert sum(page == README for page, _ in _links()) >= 20


@pytest.mark.parametrize(("page", "target"), _links(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page: Path, target: str):
    path, _, anchor = target.partition("#")
    found = (page.parent / path).resolve() if path else page
    assert found.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
    if anchor and found.suffix == ".md":
        assert anchor in _anchors(found), f"{page.relative_to(ROOT)} links to {target}: no such heading"


def test_the_parameter_reference_is_generated_from_the_template():
    page = parameters.PAGE.read_text(encoding="utf-8")
    assert parameters.render(page) == page, "docs/parameters.md is stale: run python scripts/parameters.py"


def test_the_parameter_reference_names_every_parameter_with_its_default():
    page = parameters.PAGE.read_text(encoding="utf-8")
    for name, spec in load_template()["Parameters"].items():
        (row,) = [line for line in page.splitlines() if line.startswith(f"| `{name}` |")]
        default = str(spec["Default"]) if "Default" in spec else None
        cell = row.split(" | ")[1]
        assert cell == ("**required**" if default is None else f"`{default}`" if default else "(empty)"), row


def test_the_readme_counts_the_parameters_there_are():
    count = len(load_template()["Parameters"])
    said = re.search(rf"\bAll {count}\b", README.read_text(encoding="utf-8"))
    assert said, f"the README should say All {count}"


def _allowed() -> set[str]:
    policy = json.loads(POLICY.read_text(encoding="utf-8"))
    out: set[str] = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and statement["Resource"]
        actions = statement["Action"]
        out.update([actions] if isinstance(actions, str) else actions)
    return out


def _needed(resource: dict[str, Any]) -> set[str]:
    kind = resource["Type"]
    assert kind in CREATES, (
        f"{kind} is new in template.yaml: add what creating it takes, here and to the policy"
    )
    needed = set(CREATES[kind])
    props = resource.get("Properties", {})
    for event in props.get("Events", {}).values():
        needed |= EVENTS[event["Type"]]
    for setting, actions in SETTINGS.items():
        if setting in props:
            needed |= actions
    return needed


def test_the_deployer_policy_allows_creating_every_resource_of_the_template():
    allowed = _allowed()
    template = load_template()
    missing = {
        f"{name}: {action}"
        for name, resource in template["Resources"].items()
        for action in _needed(resource)
        if action not in allowed
    }
    if template["Globals"]["Function"].get("Tracing"):
        missing |= {f"Globals.Tracing: {a}" for a in SETTINGS["Tracing"] - allowed}
    assert not missing, f"{POLICY.name} lacks:\n" + "\n".join(sorted(missing))


def test_the_deployer_policy_covers_every_service_of_the_template():
    services = {action.split(":")[0] for action in _allowed()}
    kinds = {r["Type"] for r in load_template()["Resources"].values()}
    named = {kind.split("::")[1].lower() for kind in kinds if not kind.startswith("AWS::Serverless::")}
    assert named <= services
    assert {"cloudformation", "lambda", "iam", "states", "events", "secretsmanager"} <= services
