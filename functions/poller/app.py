"""Poller steps, called by the state machine: `check` a batch, then `collect` its results."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from batch_relay import clock
from batch_relay.errors import surfacing
from batch_relay.observability import logger, metrics, tracer
from batch_relay.poller import Poller
from batch_relay.settings import settings

poller = Poller.from_settings(settings())
# Stop collecting this long before Lambda's own timeout, leaving time to write the last chunk.
SAFETY_MS = 60_000


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def check(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(batch_id=event.get("batch_id"))
    with surfacing():
        return poller.check(event, deadline=clock.now() + context.get_remaining_time_in_millis() / 1000 - 5)


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def collect(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(batch_id=event.get("batch_id"))
    remaining = max(1.0, (context.get_remaining_time_in_millis() - SAFETY_MS) / 1000)
    budget = min(poller.settings.collect_budget_seconds, remaining)
    with surfacing():
        return poller.collect(event, deadline=clock.now() + budget)
