"""The relay's stack on one machine: AWS emulated by moto, built from template.yaml itself.

`LocalStack` creates every resource the template declares that the relay touches (table, queues,
buckets, topic, secret, state machine), gives each function the environment the template gives it,
and runs the functions the way AWS would: SQS batches delivered to the buffer in Lambda's event
shape with partial-batch failures honoured, the submitter fired like the schedule, and the poller
state machine definition from the repository executed by moto's Step Functions engine, whose Lambda
tasks call the handlers named in the template.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import boto3
import yaml
from batch_relay.errors import FunctionKilled
from moto import mock_aws

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
ACCOUNT = "123456789012"
REGION = "us-east-1"
LOCAL_KEY = "sk-ant-local-emulator"


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !GetAtt, !Sub ...) read as their long forms."""


def _tag(loader: yaml.Loader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _tag)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_CfnLoader)


@dataclass
class Function:
    logical_id: str
    code_uri: Path
    handler: str
    timeout: int
    memory: int
    env: dict[str, str]

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.logical_id}"


class LambdaContext:
    """What Lambda passes as `context`, enough for Powertools and the time budget."""

    def __init__(self, fn: Function):
        self.function_name = fn.logical_id
        self.function_version = "$LATEST"
        self.invoked_function_arn = fn.arn
        self.memory_limit_in_mb = fn.memory
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{fn.logical_id}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + fn.timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class LocalStack:
    """Start with `with LocalStack(...) as stack:`; everything is gone when the block ends."""

    def __init__(
        self,
        parameters: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        template: Path = TEMPLATE,
        wait_scale: float = 1.0,
        wait_cap: float = 0.05,
        on_wait: Callable[[float], None] | None = None,
    ):
        self.template = load_template(template)
        self.params = self._parameters(parameters or {})
        self.extra_env = env or {}
        # Wait states sleep wait_seconds * wait_scale, at most wait_cap real seconds.
        self.wait_scale, self.wait_cap = wait_scale, wait_cap
        # Called with each Wait state's seconds, e.g. to move simulated clocks instead of sleeping.
        self.on_wait = on_wait
        self.physical: dict[str, str] = {}
        self.arns: dict[str, str] = {}
        self.functions: dict[str, Function] = {}
        self.modules: dict[str, ModuleType] = {}
        self._patches: list[Any] = []
        self._lock = threading.RLock()
        self.invocations: dict[str, int] = {}
        # Called around every AWS call a function makes (not the harness's own), to inject faults:
        # `before(function, operation)` may raise (refused), `after(function, operation)` too
        # (the call acted, then the function died).
        self.before: Callable[[str, str], None] | None = None
        self.after: Callable[[str, str], None] | None = None
        # Seconds the relay's clock runs ahead of real time; `advance` moves it, to make tiers due.
        self.offset = 0.0
        # Realtime messages the function hid (a retry-after): each delay asked, and until when (on
        # the relay's clock) each message stays out of delivery, so tests need not wait it out.
        # Whoever receives a realtime message outside `deliver_realtime` (a test, the chaos run)
        # puts it in `receipts` (receipt handle -> message id) to have its hides timed, and in
        # `parked` (message id -> receipt handle) to keep it received until its hide is over.
        self.hidden_for: list[float] = []
        self.hidden_until: dict[str, float] = {}
        self.receipts: dict[str, str] = {}
        self.parked: dict[str, str] = {}
        # Whether tick() and settle() deliver the realtime queue as Lambda's poller would; a test
        # turns it off to hold realtime messages back and deliver them itself.
        self.polls_realtime = True

    # lifecycle

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.setdefault(k, "testing")
        self._env_before = dict(os.environ)
        self._mock = mock_aws(
            config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
        )
        self._mock.start()
        self._create_resources()
        self._functions()
        self._patch()
        os.environ.update(self.environment())
        _reset()

    def redeploy(self, **parameters: str) -> None:
        """Deploy again with some parameters changed, as `sam deploy` would: the data stays, and
        every function starts cold with its new environment."""
        self.params.update(parameters)
        os.environ.update(self.environment())
        for key in list(self.modules):
            sys.modules.pop(f"relay_fn_{key}", None)
        self.modules.clear()
        _reset()

    def stop(self) -> None:
        for p in reversed(self._patches):
            p.stop()
        self._patches.clear()
        self._mock.stop()
        os.environ.clear()
        os.environ.update(self._env_before)
        for name in list(self.modules):
            sys.modules.pop(f"relay_fn_{name}", None)
        self.modules.clear()
        _reset()

    # template

    def _parameters(self, given: dict[str, str]) -> dict[str, str]:
        out = {}
        for name, spec in self.template.get("Parameters", {}).items():
            if "Default" in spec:
                out[name] = str(spec["Default"])
        out.update(given)
        return out

    def resolve(self, value: Any) -> Any:
        """Evaluate the intrinsic functions the template uses, against this stack's resources."""
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "Ref" in value:
            name = value["Ref"]
            if name == "AWS::Region":
                return REGION
            if name == "AWS::AccountId":
                return ACCOUNT
            if name == "AWS::StackName":
                return "batch-relay-local"
            if name == "AWS::Partition":
                return "aws"
            if name == "AWS::URLSuffix":
                return "amazonaws.com"
            if name == "AWS::NoValue":
                return None
            if name in self.params:
                return self.params[name]
            return self.physical.get(name, name)
        if "Fn::GetAtt" in value:
            name, attr = value["Fn::GetAtt"]
            if attr in ("Arn", "TopicArn", "QueueArn"):
                return self.arns.get(name, f"arn:aws:::{name}")
            if attr == "Name" and ":stateMachine:" in self.physical.get(name, ""):
                return self.physical[name].rsplit(":", 1)[1]
            return self.physical.get(name, name)
        if "Fn::Sub" in value:
            spec = value["Fn::Sub"]
            text, extra = (spec, {}) if isinstance(spec, str) else (spec[0], self.resolve(spec[1]))
            for key, val in extra.items():
                text = text.replace("${" + key + "}", str(val))

            def repl(m: re.Match[str]) -> str:
                ref = m.group(1)
                if "." in ref:
                    return str(self.resolve({"Fn::GetAtt": ref.split(".", 1)}))
                return str(self.resolve({"Ref": ref}))

            return re.sub(r"\$\{([A-Za-z0-9_:.]+)\}", repl, text)
        if "Fn::Join" in value:
            sep, parts = value["Fn::Join"]
            return sep.join(str(p) for p in self.resolve(parts))
        if "Fn::If" in value:
            return self.resolve(value["Fn::If"][1])
        if "Fn::Select" in value:
            index, items = value["Fn::Select"]
            return self.resolve(items)[int(index)]
        if "Fn::Split" in value:
            sep, text = value["Fn::Split"]
            return str(self.resolve(text)).split(sep)
        return {k: self.resolve(v) for k, v in value.items()}

    def resources(self, kind: str) -> Iterable[tuple[str, dict[str, Any]]]:
        for name, res in self.template["Resources"].items():
            if res["Type"] == kind:
                yield name, res.get("Properties", {})

    def _create_resources(self) -> None:
        ddb = boto3.client("dynamodb", region_name=REGION)
        for name, props in self.resources("AWS::DynamoDB::Table"):
            table = props.get("TableName") or f"batch-relay-{name}"
            args = {
                k: self.resolve(props[k])
                for k in ("KeySchema", "AttributeDefinitions", "GlobalSecondaryIndexes", "BillingMode")
                if k in props
            }
            ddb.create_table(TableName=table, **args)
            ttl = props.get("TimeToLiveSpecification")
            if ttl:
                ddb.update_time_to_live(TableName=table, TimeToLiveSpecification=self.resolve(ttl))
            self.physical[name] = table
            self.arns[name] = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{table}"

        s3 = boto3.client("s3", region_name=REGION)
        for name, _props in self.resources("AWS::S3::Bucket"):
            bucket = f"batch-relay-{name.lower()}-{uuid.uuid4().hex[:8]}"
            s3.create_bucket(Bucket=bucket)
            self.physical[name] = bucket
            self.arns[name] = f"arn:aws:s3:::{bucket}"

        sns = boto3.client("sns", region_name=REGION)
        for name, _props in self.resources("AWS::SNS::Topic"):
            arn = sns.create_topic(Name=f"batch-relay-{name}")["TopicArn"]
            self.physical[name] = self.arns[name] = arn

        sqs = boto3.client("sqs", region_name=REGION)
        queues = dict(self.resources("AWS::SQS::Queue"))
        # Dead-letter queues first: a queue's redrive policy names its DLQ's ARN.
        order = sorted(queues, key=lambda n: "RedrivePolicy" in queues[n])
        for name in order:
            props = queues[name]
            attrs: dict[str, str] = {}
            for key in (
                "VisibilityTimeout",
                "MessageRetentionPeriod",
                "DelaySeconds",
                "ReceiveMessageWaitTimeSeconds",
            ):
                if key in props:
                    attrs[key] = str(self.resolve(props[key]))
            if "RedrivePolicy" in props:
                attrs["RedrivePolicy"] = json.dumps(self.resolve(props["RedrivePolicy"]))
            url = sqs.create_queue(QueueName=f"batch-relay-{name}", Attributes=attrs)["QueueUrl"]
            self.physical[name] = url
            self.arns[name] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
                "Attributes"
            ]["QueueArn"]

        # The Anthropic key, read by the functions through Powertools parameters as in AWS.
        key = os.environ.get("ANTHROPIC_API_KEY") or LOCAL_KEY
        secret = boto3.client("secretsmanager", region_name=REGION).create_secret(
            Name="batch-relay/anthropic-api-key", SecretString=key
        )
        self.params["ApiKeySecretArn"] = secret["ARN"]

    def _functions(self) -> None:
        globals_ = self.template.get("Globals", {}).get("Function", {})
        base_env = globals_.get("Environment", {}).get("Variables", {})
        for name, props in self.resources("AWS::Serverless::Function"):
            env = {**base_env, **props.get("Environment", {}).get("Variables", {})}
            self.functions[name] = Function(
                logical_id=name,
                code_uri=ROOT / props["CodeUri"],
                handler=props["Handler"],
                timeout=int(self.resolve(props.get("Timeout", globals_.get("Timeout", 3)))),
                memory=int(self.resolve(props.get("MemorySize", globals_.get("MemorySize", 128)))),
                env=env,
            )
            self.physical[name] = name
            self.arns[name] = self.functions[name].arn

        sfn = boto3.client("stepfunctions", region_name=REGION)
        for name, props in self.resources("AWS::Serverless::StateMachine"):
            definition = (ROOT / props["DefinitionUri"]).read_text()
            for key, val in self.resolve(props.get("DefinitionSubstitutions", {})).items():
                definition = definition.replace("${" + key + "}", str(val))
            arn = sfn.create_state_machine(
                name=f"batch-relay-{name}",
                definition=definition,
                roleArn=f"arn:aws:iam::{ACCOUNT}:role/batch-relay-{name}",
                type=props.get("Type", "STANDARD"),
            )["stateMachineArn"]
            self.physical[name] = self.arns[name] = arn

    def environment(self, function: str | None = None) -> dict[str, str]:
        """A function's variables as the template sets them (all functions' when none is named)."""
        chosen = [self.functions[function]] if function else list(self.functions.values())
        env: dict[str, str] = {"POWERTOOLS_TRACE_DISABLED": "true", "AWS_DEFAULT_REGION": REGION}
        for fn in chosen:
            for key, val in fn.env.items():
                resolved = self.resolve(val)
                if resolved is not None:
                    env[key] = str(resolved)
        env.update(self.extra_env)
        return env

    # running functions

    def handler(self, logical_id: str) -> Callable[[dict[str, Any], Any], Any]:
        fn = self.functions[logical_id]
        module_file, attr = fn.handler.rsplit(".", 1)
        key = f"{fn.code_uri.name}_{module_file}"
        with self._lock:
            module = self.modules.get(key)
            if module is None:
                spec = importlib.util.spec_from_file_location(
                    f"relay_fn_{key}", fn.code_uri / f"{module_file}.py"
                )
                assert spec and spec.loader
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
                self.modules[key] = module
        return getattr(module, attr)  # type: ignore[no-any-return]

    def invoke(self, logical_id: str, event: Any) -> Any:
        """Call a function's handler as Lambda would: its event, a context, its return value."""
        with self._lock:
            self.invocations[logical_id] = self.invocations.get(logical_id, 0) + 1
        handler = self.handler(logical_id)
        outer = (
            getattr(_RUNNING, "function", None),
            getattr(_RUNNING, "invocation", 0),
            getattr(_RUNNING, "calls", 0),
        )
        _RUNNING.function, _RUNNING.invocation, _RUNNING.calls = logical_id, next(_INVOCATIONS), 0
        try:
            return handler(event, LambdaContext(self.functions[logical_id]))
        finally:
            _RUNNING.function, _RUNNING.invocation, _RUNNING.calls = outer

    def _patch(self) -> None:
        from moto.awslambda_simple.models import LambdaSimpleBackend

        stack = self

        def invoke(
            self: Any, function_name: str, qualifier: Any, body: Any, headers: Any, response_headers: Any
        ):
            name = function_name.rsplit(":function:", 1)[-1].split(":")[0]
            event = json.loads(body) if body else {}
            try:
                result = stack.invoke(name, event)
            except FunctionKilled as exc:  # a function that dies answers nothing: Lambda says so
                response_headers["x-amz-function-error"] = "Unhandled"
                return json.dumps({"errorType": "Sandbox.Timedout", "errorMessage": str(exc)}).encode()
            except Exception as exc:  # reported as Lambda does, so Retry/Catch see the exception's name
                response_headers["x-amz-function-error"] = "Unhandled"
                return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}).encode()
            return json.dumps(result).encode()

        from botocore.client import BaseClient

        real_call = BaseClient._make_api_call

        def call(self: Any, operation: str, params: Any) -> Any:
            function = getattr(_RUNNING, "function", None)
            if function is None:
                return real_call(self, operation, params)
            _RUNNING.calls += 1
            _RUNNING.params = params
            if stack.before is not None:
                stack.before(function, operation)
            if operation == "ChangeMessageVisibility" and params.get("ReceiptHandle") in stack.receipts:
                # A message hidden for a retry-after comes back when the relay's clock says so.
                seconds = float(params["VisibilityTimeout"])
                stack.hidden_for.append(seconds)
                stack.hidden_until[stack.receipts[params["ReceiptHandle"]]] = clock.now() + seconds
                # Hidden until the relay's clock passes it (see `deliver_realtime`), not real time:
                # for long enough, within SQS's 12 hours from the message's sending.
                params = {**params, "VisibilityTimeout": 6 * 3600}
            answer = real_call(self, operation, params)
            if stack.after is not None:
                stack.after(function, operation)
            return answer

        from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
        from moto.stepfunctions.parser.asl.component.state.wait.wait_function.wait_function import (
            WaitFunction,
        )

        def wait(self: Any, env: Any, wait_seconds: int) -> None:
            if stack.on_wait is not None:
                stack.on_wait(wait_seconds)
            time.sleep(min(stack.wait_cap, max(0.0, wait_seconds * stack.wait_scale)))

        fake_time = mock.MagicMock(wraps=time)
        fake_time.sleep = lambda s: time.sleep(min(stack.wait_cap, s * stack.wait_scale))
        from batch_relay import clock
        from boto3.dynamodb.transform import TransformationInjector
        from moto.dynamodb.models import DynamoDBBackend

        # DynamoDB applies a conditional write atomically and reads consistent items; moto checks
        # and writes in two steps and copies items while others change them, so concurrent
        # invocations here (threads) would see races the real service rules out.
        operations = (
            "put_item",
            "update_item",
            "delete_item",
            "transact_write_items",
            "get_item",
            "query",
            "scan",
        )
        atomic = [
            mock.patch.object(DynamoDBBackend, name, _serialised(getattr(DynamoDBBackend, name)))
            for name in operations
        ]
        # A boto3 DynamoDB resource builds every call's condition expressions with one shared
        # builder (its placeholder counters reset per call). Lambda runs one invocation a process;
        # here invocations are threads sharing the relay's cached resource, and two calls built at
        # once swap placeholders: a condition that holds fails, or one that fails holds.
        built = TransformationInjector.inject_condition_expressions
        self._patches = [
            *atomic,
            mock.patch.object(TransformationInjector, "inject_condition_expressions", _guarded(built)),
            mock.patch.object(clock, "now", lambda: time.time() + stack.offset),
            mock.patch.object(LambdaSimpleBackend, "invoke", invoke),
            mock.patch.object(BaseClient, "_make_api_call", call),
            mock.patch.object(WaitFunction, "_wait_interval", wait),
            mock.patch.object(retrier_decl, "time", fake_time),
        ]
        for p in self._patches:
            p.start()

    # driving the pipeline

    @property
    def sqs(self) -> Any:
        return boto3.client("sqs", region_name=REGION)

    def queue_url(self, logical_id: str = "RequestQueue") -> str:
        return self.physical[logical_id]

    def send(self, bodies: Iterable[str | dict[str, Any]]) -> int:
        """Send request messages to the request queue, ten a call, as a producer would."""
        entries = [b if isinstance(b, str) else json.dumps(b) for b in bodies]
        for start in range(0, len(entries), 10):
            chunk = entries[start : start + 10]
            answer = self.sqs.send_message_batch(
                QueueUrl=self.queue_url(),
                Entries=[{"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)],
            )
            if answer.get("Failed"):
                raise RuntimeError(f"SQS refused {answer['Failed']}")
        return len(entries)

    def deliver(self, batch_size: int | None = None, rounds: int = 1000) -> dict[str, int]:
        """Deliver queued messages to the buffer in Lambda-shaped batches until the queue is empty.

        Records reported as failed stay on the queue and come back once their visibility timeout
        has passed (here: at once), up to the redrive policy's maxReceiveCount.
        """
        size = batch_size or int(self.params.get("BufferBatchSize", 10))
        url, arn = self.queue_url(), self.arns["RequestQueue"]
        delivered = failed = 0
        for _ in range(rounds):
            messages: list[dict[str, Any]] = []
            while len(messages) < size:
                got = self.sqs.receive_message(
                    QueueUrl=url,
                    MaxNumberOfMessages=min(10, size - len(messages)),
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                ).get("Messages", [])
                if not got:
                    break
                messages.extend(got)
            if not messages:
                break
            event = {"Records": [sqs_record(m, arn) for m in messages]}
            try:
                answer = self.invoke("BufferFunction", event)
                failures = {f["itemIdentifier"] for f in answer.get("batchItemFailures", [])}
            except (Exception, FunctionKilled):  # a failed invocation returns the whole batch to the queue
                failures = {m["MessageId"] for m in messages}
            for m in messages:
                if m["MessageId"] in failures:
                    self.sqs.change_message_visibility(
                        QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0
                    )
                else:
                    self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            delivered += len(messages) - len(failures)
            failed += len(failures)
        return {"delivered": delivered, "failed": failed}

    def deliver_realtime(self, rounds: int = 1000) -> dict[str, int]:
        """Deliver the realtime queue to its function one message an invocation (its BatchSize),
        as Lambda would; a message the function hid for a retry-after waits until the relay's clock
        passes it (`advance`), a failed one comes back at the next delivery. A message is received
        at most once a delivery, and not at all while it is hidden, so only the function's own
        failures count towards the dead-letter queue, not this loop's receives."""
        from batch_relay import clock

        url, arn = self.queue_url("RealtimeQueue"), self.arns["RealtimeQueue"]
        # Messages waiting out their time stay received (invisible) until it has passed, so a
        # wait costs one receive, as in AWS, not one per delivery round.
        for mid, handle in list(self.parked.items()):
            if self.hidden_until.get(mid, 0.0) <= clock.now():
                del self.parked[mid]
                self._visible(url, handle)
        delivered = failed = 0
        # Failed messages stay received until this delivery ends, so it does not receive them again.
        back: list[str] = []
        for _ in range(rounds):
            got = self.sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
                VisibilityTimeout=43_200,
            ).get("Messages", [])
            if not got:
                break
            for m in got:
                if self.hidden_until.get(m["MessageId"], 0.0) > clock.now():
                    self.parked[m["MessageId"]] = m["ReceiptHandle"]
                    continue
                self.receipts[m["ReceiptHandle"]] = m["MessageId"]
                try:
                    answer = self.invoke("RealtimeFunction", {"Records": [sqs_record(m, arn)]})
                    ok = not answer.get("batchItemFailures")
                except (Exception, FunctionKilled):
                    ok = False
                if ok:
                    self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
                    delivered += 1
                    continue
                failed += 1
                if self.hidden_until.get(m["MessageId"], 0.0) > clock.now():
                    self.parked[m["MessageId"]] = m["ReceiptHandle"]
                else:
                    back.append(m["ReceiptHandle"])
        for handle in back:
            self._visible(url, handle)
        return {"delivered": delivered, "failed": failed, "waiting": len(self.parked)}

    def _visible(self, url: str, handle: str) -> None:
        with contextlib.suppress(self.sqs.exceptions.ReceiptHandleIsInvalid):  # dead-lettered meanwhile
            self.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=0)

    def tick(self) -> Any:
        """Fire the submitter as its schedule would; then, as Lambda polls the realtime queue all
        the while, deliver what the run sent realtime."""
        report = self.invoke(
            "SubmitterFunction", json.loads((ROOT / "events" / "submitter.json").read_text())
        )
        if self.polls_realtime:
            self.deliver_realtime()
        return report

    def executions(self) -> list[dict[str, Any]]:
        sfn = boto3.client("stepfunctions", region_name=REGION)
        pages = sfn.get_paginator("list_executions").paginate(stateMachineArn=self.arns["PollerStateMachine"])
        return [e for page in pages for e in page["executions"]]

    def settle(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until no poller execution is running, delivering what they send realtime meanwhile;
        returns them all."""
        end = time.monotonic() + timeout
        while True:
            runs = self.executions()
            if self.polls_realtime:
                self.deliver_realtime()
            if all(r["status"] != "RUNNING" for r in runs):
                if self.polls_realtime:
                    self.deliver_realtime()
                return runs
            if time.monotonic() > end:
                raise TimeoutError(
                    f"{sum(r['status'] == 'RUNNING' for r in runs)} poller executions still running"
                )
            time.sleep(0.05)

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def open_work(self) -> dict[str, int]:
        """Requests waiting in a tier or inside a batch, and batches not yet collected."""
        from batch_relay.settings import settings
        from batch_relay.store import Store

        store = Store(settings().table_name)
        live = list(store.live_batches())
        return {
            "pending": sum(store.count(t, 10**9) for t in settings().flushed(store.known_tiers())),
            "live_batches": len(live),
            "running": sum(e["status"] == "RUNNING" for e in self.executions()),
        }

    def pump(self, rounds: int = 30, timeout: float = 120.0) -> int:
        """Run the pipeline until nothing is left to do: deliver, fire the schedule, let pollers finish.

        Each round moves the relay's clock past the longest tier wait, so every tier flushes.
        Returns the number of rounds it took.
        """
        longest = max(t.max_wait_seconds for t in _tiers())
        for n in range(1, rounds + 1):
            self.deliver()
            self.tick()
            self.settle(timeout)
            work = self.open_work()
            if not work["pending"] and not work["live_batches"]:
                return n
            self.advance(longest)
        raise TimeoutError(f"work left after {rounds} rounds: {self.open_work()}")

    def seed_batch(self, batch_id: str, ref: str, emulator: Any = None, count: int = 3) -> list[str]:
        """Make batch <batch_id> (the relay's <ref>) exist as the submitter leaves it once its poller
        runs: `count` requests claimed by it in the table, its claim journal in S3, and, when an
        emulator is given, the batch at the API, ended. Returns the requests' ids."""
        from batch_relay import clock
        from batch_relay.lifecycle import Batch, new_record
        from batch_relay.payloads import Payloads
        from batch_relay.settings import settings
        from batch_relay.store import Store, request_key

        config = settings()
        store, payloads = Store(config.table_name), Payloads(config.bucket_name)
        now, ttl = clock.iso(), int(clock.now()) + config.retention_days * 86400
        ids = [f"seed-{ref[:12]}-{i}" for i in range(count)]
        params = {
            "model": "claude-haiku-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Classify the post as ok, spam or abuse."}],
        }
        payloads.journal(ref, 0, ids)
        store.put_many(
            {
                "pk": request_key(rid),
                "kind": "request",
                "request_id": rid,
                "tier": config.default_tier,
                "model": params["model"],
                "status": "claimed",
                "batch_ref": ref,
                "attempts": 1,
                "metadata": {"seeded": "true"},
                "received_at": now,
                "submitted_at": now,
                "ttl": ttl,
            }
            for rid in ids
        )
        store.add(
            new_record(
                config.default_tier,
                config.retention_days,
                Batch.POLLING,
                ref=ref,
                batch_id=batch_id,
                submitted_at=now,
                input_key=f"input/{ref}.jsonl",
                request_count=count,
            )
        )
        if emulator is not None:
            emulator.preload(batch_id, [{"custom_id": rid, "params": params} for rid in ids])
        return ids

    def seed_realtime(self, request_id: str, ref: str) -> None:
        """Make request <request_id> wait for a realtime answer under realtime record <ref>, as the
        submitter leaves it when a batch cannot make its deadline: its line in S3, its item claimed
        by the record, the record and its claim journal."""
        from batch_relay import clock
        from batch_relay.lifecycle import Batch, new_record
        from batch_relay.payloads import Payloads, request_line
        from batch_relay.settings import settings
        from batch_relay.store import Store, request_key

        config = settings()
        store, payloads = Store(config.table_name), Payloads(config.bucket_name)
        now, ttl = clock.iso(), int(clock.now()) + config.retention_days * 86400
        params = {
            "model": "claude-haiku-4-5",
            "max_tokens": 256,
            "messages": [{"role": "user", "content": "Summarise the ticket: export to CSV does nothing."}],
        }
        line = request_line(request_id, params)
        key = f"bodies/seed/{ref}.jsonl"
        payloads.put_lines(key, [line + b"\n"])
        payloads.journal(ref, 0, [request_id])
        store.put_many(
            [
                {
                    "pk": request_key(request_id),
                    "kind": "request",
                    "request_id": request_id,
                    "tier": config.default_tier,
                    "model": params["model"],
                    "status": "claimed",
                    "batch_ref": ref,
                    "route": "realtime",
                    "attempts": 1,
                    "max_tokens": params["max_tokens"],
                    "deadline": clock.iso(clock.now() + 600),
                    "received_at": now,
                    "submitted_at": now,
                    "body_key": key,
                    "body_at": 0,
                    "body_len": len(line),
                    "ttl": ttl,
                }
            ]
        )
        store.add(
            new_record(
                config.default_tier,
                config.retention_days,
                Batch.REALTIME,
                ref=ref,
                route="realtime",
                request_count=1,
            )
        )

    def subscribe(self, filter_policy: dict[str, Any] | None = None, scope: str = "MessageAttributes") -> str:
        """A queue subscribed to the completion topic with raw delivery (and a filter policy if given)."""
        url = self.sqs.create_queue(QueueName=f"completions-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        attrs = {"RawMessageDelivery": "true"}
        if filter_policy:
            attrs.update(FilterPolicy=json.dumps(filter_policy), FilterPolicyScope=scope)
        boto3.client("sns", region_name=REGION).subscribe(
            TopicArn=self.arns["CompletionTopic"], Protocol="sqs", Endpoint=arn, Attributes=attrs
        )
        return url

    def drain(self, url: str) -> list[dict[str, Any]]:
        """Every message on a subscribed queue: the completion body plus its SNS attributes."""
        out: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
            ).get("Messages", [])
            if not got:
                return out
            for m in got:
                body = json.loads(m["Body"])
                body["_attributes"] = {k: v["StringValue"] for k, v in m.get("MessageAttributes", {}).items()}
                out.append(body)
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


# Held around each of moto's DynamoDB calls: holding it, a reader sees no write half-done.
WRITES = threading.RLock()
# Which function's handler this thread is running, if any: its AWS calls are the relay's own.
_RUNNING = threading.local()
_INVOCATIONS = itertools.count(1)


def current_call() -> tuple[int, int]:
    """(invocation serial, number of its AWS call) of the function this thread is running."""
    return getattr(_RUNNING, "invocation", 0), getattr(_RUNNING, "calls", 0)


def current_params() -> Any:
    """The parameters of the AWS call this thread's function is making (or made last)."""
    return getattr(_RUNNING, "params", None)


def current_function() -> str | None:
    """The logical id of the function this thread is running, if any."""
    return getattr(_RUNNING, "function", None)


@contextlib.contextmanager
def as_harness() -> Iterator[None]:
    """AWS calls made inside, even from a function's thread (a hook's), as the harness's own: no
    hook sees them, none is counted."""
    saved = current_function()
    _RUNNING.function = None
    try:
        yield
    finally:
        _RUNNING.function = saved


def _serialised(method: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        with WRITES:
            return method(*args, **kwargs)

    return call


_BUILDING = threading.Lock()


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    def build(*args: Any, **kwargs: Any) -> Any:
        with _BUILDING:
            return method(*args, **kwargs)

    return build


def _tiers() -> list[Any]:
    from batch_relay.settings import settings

    return list(settings().tiers.values())


def _reset() -> None:
    """Forget cached clients and settings, which belong to one stack."""
    from batch_relay import aws, batches
    from batch_relay.settings import api_settings, settings

    aws.reset()
    batches.reset()
    settings.cache_clear()
    api_settings.cache_clear()
    observability = sys.modules.get("batch_relay.observability")
    if observability is not None:
        # Metrics read their namespace when first made, maybe before a stack set the environment
        # (a test module that imports the layer): they take this stack's, as a cold start would.
        observability.metrics.namespace = os.environ.get("POWERTOOLS_METRICS_NAMESPACE")
        observability.metrics.service = os.environ.get("POWERTOOLS_SERVICE_NAME")


def sqs_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    attrs = message.get("Attributes", {})
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {
            "ApproximateReceiveCount": attrs.get("ApproximateReceiveCount", "1"),
            "SentTimestamp": attrs.get("SentTimestamp", str(int(time.time() * 1000))),
            "SenderId": attrs.get("SenderId", ACCOUNT),
            "ApproximateFirstReceiveTimestamp": attrs.get(
                "ApproximateFirstReceiveTimestamp", str(int(time.time() * 1000))
            ),
        },
        "messageAttributes": {
            k: {
                "stringValue": v.get("StringValue"),
                "binaryValue": v.get("BinaryValue"),
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": v["DataType"],
            }
            for k, v in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }
