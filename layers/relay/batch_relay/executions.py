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
