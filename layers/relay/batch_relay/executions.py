"""Starting the poller state machine: the only module that touches Step Functions."""

from __future__ import annotations

import json

from . import aws


def start(state_machine_arn: str, name: str, payload: dict[str, object]) -> bool:
    """Start the poller under a fixed name; False when that execution already exists (a retry)."""
    sfn = aws.client("stepfunctions")
    try:
        sfn.start_execution(stateMachineArn=state_machine_arn, name=name, input=json.dumps(payload))
    except sfn.exceptions.ExecutionAlreadyExists:
        return False
    return True


def _arn(state_machine_arn: str, name: str) -> str:
    return state_machine_arn.replace(":stateMachine:", ":execution:") + f":{name}"


def status(state_machine_arn: str, name: str) -> str:
    """RUNNING, SUCCEEDED, FAILED, TIMED_OUT, ABORTED, or MISSING when there is none by that name."""
    sfn = aws.client("stepfunctions")
    try:
        return str(sfn.describe_execution(executionArn=_arn(state_machine_arn, name))["status"])
    except sfn.exceptions.ExecutionDoesNotExist:
        return "MISSING"


def input_of(state_machine_arn: str, name: str) -> dict[str, object]:
    """The input an existing execution was started with."""
    sfn = aws.client("stepfunctions")
    answer = sfn.describe_execution(executionArn=_arn(state_machine_arn, name))
    found: dict[str, object] = json.loads(answer.get("input") or "{}")
    return found
