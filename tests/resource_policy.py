"""What AWS decides for one request against a resource policy (a topic's or a queue's), for the
tests that check who may subscribe or send.

moto applies no topic or queue policy (its SNS Subscribe and SQS SendMessage never read them), and
its IAM evaluator (`moto.iam.access_control`) knows only `StringEquals` and lets any other
condition operator pass, which would make every Deny here deny everything. The evaluators on PyPI
either evaluate identity policies only or skip the condition keys they do not know (`sns:Protocol`,
`sns:Endpoint`). So this is the smallest honest evaluator for exactly what our policies use:

- the condition operators String(Not)Equals, String(Not)Like, Arn(Not)Equals, Arn(Not)Like and
  Bool, with IAM's rules: a key holding one value matches a list of values if it matches any of
  them; a negated operator holds when the value matches none; a key the request lacks makes a
  positive operator false and a negated one true; `*` and `?` are IAM's wildcards (for ARNs, in
  each of the six colon-separated parts on its own);
- principals `*`, an account id or root ARN (every principal of that account) and exact ARNs;
- an explicit Deny wins; otherwise a principal of the resource's account is allowed by the
  resource policy or by its own identity policy, and a principal of another account needs both.

Anything else (another operator, NotPrincipal, NotResource) raises, so a policy that grows past
what this knows fails the tests instead of being judged wrongly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

KNOWN_OPERATORS = {
    "StringEquals",
    "StringNotEquals",
    "StringLike",
    "StringNotLike",
    "ArnEquals",
    "ArnNotEquals",
    "ArnLike",
    "ArnNotLike",
    "Bool",
}


@dataclass(frozen=True)
class Request:
    """One call: who makes it, what and on what, and the condition keys AWS puts in its context."""

    principal: str
    action: str
    resource: str
    context: dict[str, str] = field(default_factory=dict)

    @property
    def account(self) -> str:
        return self.principal.split(":")[4]

    def keys(self) -> dict[str, str]:
        """The request's context as AWS fills it: the principal's keys and TLS, then the call's own."""
        base = {
            "aws:PrincipalArn": self.principal,
            "aws:PrincipalAccount": self.account,
            "aws:SecureTransport": "true",
        }
        return base | self.context


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _glob(pattern: str, value: str) -> bool:
    """IAM's wildcards: `*` any run of characters (colons too), `?` exactly one; case-sensitive."""
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, value, re.DOTALL) is not None


def _arn_like(pattern: str, value: str) -> bool:
    """ArnLike: each of the six colon-delimited parts matched on its own."""
    want, got = pattern.split(":", 5), value.split(":", 5)
    if len(want) != 6 or len(got) != 6:
        return False
    return all(_glob(w, g) for w, g in zip(want, got, strict=True))


def _matches(operator: str, pattern: str, value: str) -> bool:
    base = operator.replace("Not", "")
    if base == "StringEquals" or base == "ArnEquals":
        return pattern == value
    if base == "StringLike":
        return _glob(pattern, value)
    if base == "ArnLike":
        return _arn_like(pattern, value)
    if base == "Bool":
        return pattern.lower() == value.lower()
    raise AssertionError(f"condition operator {operator} is not evaluated here")


def condition_holds(operator: str, key: str, patterns: Any, context: dict[str, str]) -> bool:
    if operator not in KNOWN_OPERATORS:
        raise AssertionError(f"condition operator {operator} is not evaluated here")
    negated = "Not" in operator
    if key not in context:
        return negated
    hit = any(_matches(operator, str(p), context[key]) for p in _listed(patterns))
    return not hit if negated else hit


def _principal_matches(principal: Any, request: Request) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, dict) or set(principal) != {"AWS"}:
        raise AssertionError(f"principal {principal} is not evaluated here")
    for name in _listed(principal["AWS"]):
        name = str(name)
        if name == "*":
            return True
        account = name if re.fullmatch(r"\d{12}", name) else None
        if name.endswith(":root"):
            account = name.split(":")[4]
        if account is not None and account == request.account:
            return True
        if name == request.principal:
            return True
    return False


def applies(statement: dict[str, Any], request: Request) -> bool:
    """Whether the statement speaks to this request: principal, action, resource and conditions."""
    unknown = set(statement) - {"Sid", "Effect", "Principal", "Action", "Resource", "Condition"}
    if unknown:
        raise AssertionError(f"statement elements {sorted(unknown)} are not evaluated here")
    if not _principal_matches(statement["Principal"], request):
        return False
    if not any(_glob(a.lower(), request.action.lower()) for a in _listed(statement["Action"])):
        return False
    if not any(_glob(r, request.resource) for r in _listed(statement["Resource"])):
        return False
    context = request.keys()
    return all(
        condition_holds(operator, key, patterns, context)
        for operator, spec in statement.get("Condition", {}).items()
        for key, patterns in spec.items()
    )


def allowed(policy: dict[str, Any], request: Request, owner: str, identity_allows: bool = True) -> bool:
    """AWS's decision for `request` on a resource of account `owner` with this resource policy;
    `identity_allows` says whether the principal's own IAM policies grant the action."""
    statements = [s for s in _listed(policy["Statement"]) if s is not None]
    applying = [s for s in statements if applies(s, request)]
    if any(s["Effect"] == "Deny" for s in applying):
        return False
    by_resource = any(s["Effect"] == "Allow" for s in applying)
    if request.account == owner:
        return by_resource or identity_allows
    return by_resource and identity_allows
