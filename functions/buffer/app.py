"""Buffer: SQS request messages in, pending requests in DynamoDB out (partial batch responses)."""

from typing import Any

from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.typing import LambdaContext
from batch_relay.intake import Intake
from batch_relay.observability import logger, metrics, tracer
from batch_relay.settings import settings

intake = Intake.from_settings(settings())


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return intake.process(event, context)
