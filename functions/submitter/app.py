"""Submitter: on each schedule tick, flush due tiers into message batches and start their pollers."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from batch_relay.errors import surfacing
from batch_relay.observability import logger, metrics, tracer
from batch_relay.settings import settings
from batch_relay.submitter import Submitter

config = settings()


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    with surfacing():
        return Submitter.from_settings(config).run(context.get_remaining_time_in_millis() / 1000)
