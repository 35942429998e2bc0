"""The Anthropic Message Batches API: the only module that touches the `anthropic` client.

The client is left to read ANTHROPIC_BASE_URL itself, so any deployment or test can point it at
another endpoint. The key comes from Secrets Manager (cached by Powertools) when the deployment
names a secret, otherwise from ANTHROPIC_API_KEY, which is meant for local runs only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from functools import cache
from typing import Any

import anthropic
from anthropic.types.messages import MessageBatch
from aws_lambda_powertools.utilities import parameters

from .errors import ApiAccessError, classify
from .observability import MetricUnit, logger, metrics

try:  # the SDK moved to the httpx2 fork; older releases use httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]
from .settings import settings

SECRET_MAX_AGE = 300


@cache
def _client_for(api_key: str | None) -> anthropic.Anthropic:
    # The SDK retries 429/5xx/connection errors itself, honouring retry-after; a few tries keep a
    # create or retrieve from failing on one blip without stalling the function for long.
    return anthropic.Anthropic(api_key=api_key, max_retries=3, timeout=httpx.Timeout(600.0, connect=10.0))


def reset() -> None:
    """Forget the client, so a changed environment (base URL, key) takes effect."""
    _client_for.cache_clear()


def client() -> anthropic.Anthropic:
    arn = settings().api_key_secret_arn
    key = _secret_key(arn) if arn else None
    return _client_for(key)


def _secret_key(arn: str) -> str:
    value = parameters.get_secret(arn, max_age=SECRET_MAX_AGE)
    text = value.decode() if isinstance(value, bytes) else str(value)
    # Accept either the bare key or a JSON object with an api_key field.
    if text.lstrip().startswith("{"):
        text = json.loads(text).get("api_key", "")
    if not text:
        raise ValueError(f"secret {arn} holds no API key")
    return text.strip()


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (anthropic.APIError, httpx.HTTPError) as exc:
        raise _sorted(exc) from exc


def _sorted(exc: BaseException) -> BaseException:
    kind = classify(exc)
    if isinstance(kind, ApiAccessError):
        # Nothing retries its way out of a refused key: say so loudly, for the alarm and the operator.
        logger.error(
            "Anthropic refused the API key; requests are kept until it is fixed", extra={"error": str(kind)}
        )
        metrics.add_metric(name="ApiAuthFailures", unit=MetricUnit.Count, value=1)
    return kind


def create_from(body: Iterable[bytes], length: int) -> Any:
    """Create a batch from a request body already in the API's JSON shape, sent as it is read.

    A 256 MB batch never exists in memory as request objects or as one string. `body` must be
    iterable more than once: the SDK sends it again when it retries.
    """
    return _call(
        client().post,
        "/v1/messages/batches",
        cast_to=MessageBatch,
        content=body,
        options={"headers": {"Content-Type": "application/json", "Content-Length": str(length)}},
    )


def retrieve(batch_id: str) -> Any:
    return _call(client().messages.batches.retrieve, batch_id)


def recent(limit: int = 100) -> Iterator[Any]:
    """Batches newest first, for adopting one whose create answer was lost."""
    page = _call(client().messages.batches.list, limit=limit)
    yield from page.data


def results(batch_id: str, skip: int = 0) -> Iterator[dict[str, Any]]:
    """The result lines of an ended batch as plain dicts, streamed, the first `skip` passed over."""
    try:
        stream = client().messages.batches.results(batch_id)
        for n, line in enumerate(stream):
            if n >= skip:
                yield line.to_dict()
    except (anthropic.APIError, httpx.HTTPError) as exc:
        raise _sorted(exc) from exc
