"""The resource policy evaluator the template tests rely on, held to IAM's documented rules."""

from __future__ import annotations

import pytest

from tests.resource_policy import Request, allowed, condition_holds

OWNER, OTHER = "111111111111", "222222222222"
TOPIC = f"arn:aws:sns:us-east-1:{OWNER}:topic"


def subscribe(account: str, **context: str) -> Request:
    return Request(f"arn:aws:iam::{account}:role/r", "sns:Subscribe", TOPIC, context)


def test_an_explicit_deny_wins_over_any_allow() -> None:
    allow = {"Effect": "Allow", "Principal": "*", "Action": "sns:*", "Resource": TOPIC}
    deny = allow | {"Effect": "Deny", "Condition": {"StringNotEquals": {"sns:Protocol": "sqs"}}}
    policy = {"Statement": [allow, deny]}
    assert allowed(policy, subscribe(OWNER, **{"sns:Protocol": "sqs"}), OWNER)
    assert not allowed(policy, subscribe(OWNER, **{"sns:Protocol": "http"}), OWNER)


def test_another_account_needs_the_resource_policy_and_its_own() -> None:
    grant = {"Effect": "Allow", "Principal": {"AWS": OTHER}, "Action": "sns:Subscribe", "Resource": TOPIC}
    assert not allowed({"Statement": []}, subscribe(OTHER), OWNER)
    assert allowed({"Statement": [grant]}, subscribe(OTHER), OWNER)
    assert not allowed({"Statement": [grant]}, subscribe(OTHER), OWNER, identity_allows=False)
    # In the owner's account either one is enough.
    assert allowed({"Statement": []}, subscribe(OWNER), OWNER)
    assert not allowed({"Statement": []}, subscribe(OWNER), OWNER, identity_allows=False)


@pytest.mark.parametrize(
    ("operator", "patterns", "value", "holds"),
    [
        ("StringNotEquals", ["sqs", "lambda"], "lambda", False),
        ("StringNotEquals", ["sqs", "lambda"], "http", True),
        ("StringNotEquals", ["sqs"], None, True),  # a missing key: negated operators hold
        ("StringEquals", ["sqs"], None, False),
        ("StringLike", ["arn:*:sqs:*:111111111111:*"], "arn:aws:sqs:eu-west-1:111111111111:q", True),
        ("StringNotLike", ["arn:*:sqs:*:111111111111:*"], "arn:aws:sqs:eu-west-1:222222222222:q", True),
        ("StringLike", ["a?c"], "abc", True),
        ("StringLike", ["a?c"], "abbc", False),
        ("StringLike", ["[ab]"], "a", False),  # brackets are no wildcard in IAM
        ("ArnLike", ["arn:aws:sqs:*:111111111111:*"], "arn:aws:sqs:x:111111111111:q", True),
        # ArnLike matches part by part: a `*` in the region cannot swallow the account.
        ("ArnLike", ["arn:aws:lambda:*:111111111111:function:*"], "arn:aws:lambda:r:2:function:1:x", False),
        ("ArnNotLike", ["arn:aws:sqs:*:111111111111:*"], "not an arn", True),
        ("Bool", ["false"], "true", False),
    ],
)
def test_conditions_follow_iams_rules(
    operator: str, patterns: list[str], value: str | None, holds: bool
) -> None:
    context = {} if value is None else {"key": value}
    assert condition_holds(operator, "key", patterns, context) is holds


def test_what_it_does_not_know_fails_loudly() -> None:
    with pytest.raises(AssertionError, match="IpAddress"):
        condition_holds("IpAddress", "aws:SourceIp", ["10.0.0.0/8"], {"aws:SourceIp": "10.0.0.1"})
    statement = {"Effect": "Deny", "NotPrincipal": {"AWS": OWNER}, "Action": "*", "Resource": "*"}
    with pytest.raises(AssertionError, match="NotPrincipal"):
        allowed({"Statement": [statement]}, subscribe(OWNER), OWNER)
