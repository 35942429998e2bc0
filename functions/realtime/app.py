"""Realtime: answer requests a batch cannot answer by their deadline, through the Messages API."""

from typing import Any

from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.typing import LambdaContext
from batch_relay.errors import surfacing
from batch_relay.observability import logger, metrics, tracer
from batch_relay.realtime import Realtime
from batch_relay.settings import settings

realtime = Realtime.from_settings(settings())


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    with surfacing():
        return realtime.process(event, context)
