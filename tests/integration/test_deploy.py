"""The `sam deploy` path: template.yaml through the SAM translator, as `sam deploy` sends it, then
created by moto's CloudFormation.

`package` does what `sam package` does before that: the code goes to S3 and each CodeUri and
ContentUri becomes an S3 location. The state machine's definition is inlined instead of uploaded,
because moto leaves a state machine defined by `DefinitionS3Location` empty.

What moto's CloudFormation does not model, so those parts are checked on the translated template
(what CloudFormation receives) instead of on the created resources:
- AWS::SNS::TopicPolicy, AWS::S3::BucketPolicy and AWS::SQS::QueuePolicy are not applied;
- AWS::CloudWatch::Alarm and AWS::Lambda::EventInvokeConfig are skipped;
- a function's LoggingConfig and Architectures are ignored, and a role's ManagedPolicyArns are not
  attached (inline role policies come back as Python reprs, read with `ast.literal_eval`);
- a bucket's lifecycle, encryption and public access block are not applied;
- a state machine's DefinitionSubstitutions are not substituted;
- template Rules are not evaluated (`test_batch_window_rule` evaluates ours);
- a condition's AWS::NoValue inside a list is kept as null, which is why conditional grants live
  in resources of their own (ApiKeyDecryptPolicy);
- a function's ReservedConcurrentExecutions is set without Lambda's check of the account's
  concurrency quota. CloudFormation reserves it with PutFunctionConcurrency, which Lambda refuses
  when the account would keep too little unreserved: `deploy` reserves through moto's
  PutFunctionConcurrency, which checks MOTO_LAMBDA_CONCURRENCY_QUOTA when it is set.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import cfnlint.api
import pytest
from botocore.exceptions import ClientError
from botocore.parsers import ResponseParserError
from moto import mock_aws
from moto.awslambda.models import LambdaFunction, get_backend
from moto.cloudformation.models import cloudformation_backends
from moto.cloudformation.parsing import clean_json
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

from tests import resource_policy

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"
REGION = "us-east-1"
FUNCTIONS = [
    "BufferFunction",
    "SubmitterFunction",
    "CheckBatchFunction",
    "CollectResultsFunction",
    "RealtimeFunction",
]
# The translator fills AWS::Region and friends from the session, as `sam deploy` does.
ENV = {"AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0b9d3c1e-5a4f-4c8e-9d3a-1f2e3d4c5b6a"

# Each role's grants as (action, resource) with the stack's names in braces, and the condition that
# narrows it. Anything added to or missing from a role fails this table.
ROLES: dict[str, set[tuple[str, str, str]]] = {
    "BufferFunctionRole": {
        ("dynamodb:PutItem", "{table}", "LeadingKeys req#*"),
        ("dynamodb:GetItem", "{table}", "LeadingKeys req#*"),
        ("dynamodb:UpdateItem", "{table}", "LeadingKeys req#*"),
        ("dynamodb:UpdateItem", "{table}", "LeadingKeys tiers"),
        ("s3:GetObject", "{inbox}/*", ""),
        ("s3:ListBucket", "{inbox}", ""),
        ("s3:PutObject", "{data}/bodies/*", ""),
        ("sns:Publish", "{topic}", ""),
    },
    "SubmitterFunctionRole": {
        ("dynamodb:GetItem", "{table}", ""),
        ("dynamodb:PutItem", "{table}", ""),
        ("dynamodb:UpdateItem", "{table}", ""),
        ("dynamodb:DeleteItem", "{table}", ""),
        ("dynamodb:BatchGetItem", "{table}", ""),
        ("dynamodb:BatchWriteItem", "{table}", ""),
        ("dynamodb:Query", "{table}/index/pending", ""),
        ("s3:GetObject", "{data}/bodies/*", ""),
        ("s3:GetObject", "{data}/claims/*", ""),
        ("s3:GetObject", "{data}/input/*", ""),
        ("s3:GetObject", "{data}/outbox/*", ""),
        ("s3:GetObject", "{data}/deadlines/*", ""),
        ("s3:PutObject", "{data}/claims/*", ""),
        ("s3:PutObject", "{data}/input/*", ""),
        ("s3:PutObject", "{data}/outbox/*", ""),
        ("s3:PutObject", "{data}/deadlines/*", ""),
        ("s3:AbortMultipartUpload", "{data}/input/*", ""),
        ("sqs:SendMessage", "{realtime_queue}", ""),
        ("s3:ListBucket", "{data}", "prefix claims/* outbox/*"),
        ("states:StartExecution", "{state_machine}", ""),
        ("states:DescribeExecution", "{executions}", ""),
        ("sns:Publish", "{topic}", ""),
        ("secretsmanager:GetSecretValue", "{secret}", ""),
    },
    "CheckBatchFunctionRole": {
        ("dynamodb:GetItem", "{table}", "LeadingKeys batch#*"),
        ("dynamodb:PutItem", "{table}", "LeadingKeys batch#*"),
        ("dynamodb:UpdateItem", "{table}", "LeadingKeys batch#*"),
        ("dynamodb:UpdateItem", "{table}", "LeadingKeys req#*"),
        ("dynamodb:BatchGetItem", "{table}", "LeadingKeys req#*"),
        ("dynamodb:PutItem", "{table}", "LeadingKeys lease#collect#*"),
        ("dynamodb:DeleteItem", "{table}", "LeadingKeys lease#collect#*"),
        ("dynamodb:PutItem", "{table}", "LeadingKeys turn#*"),
        ("s3:GetObject", "{data}/deadlines/*", ""),
        ("s3:PutObject", "{data}/claims/*", ""),
        ("s3:GetObject", "{data}/claims/*", ""),
        ("s3:ListBucket", "{data}", "prefix claims/*"),
        ("sqs:SendMessage", "{realtime_queue}", ""),
        ("secretsmanager:GetSecretValue", "{secret}", ""),
    },
    "CollectResultsFunctionRole": {
        ("dynamodb:GetItem", "{table}", ""),
        ("dynamodb:PutItem", "{table}", ""),
        ("dynamodb:UpdateItem", "{table}", ""),
        ("dynamodb:DeleteItem", "{table}", ""),
        ("dynamodb:BatchGetItem", "{table}", ""),
        ("dynamodb:BatchWriteItem", "{table}", ""),
        ("s3:GetObject", "{data}/claims/*", ""),
        ("s3:GetObject", "{data}/outbox/*", ""),
        ("s3:ListBucket", "{data}", "prefix claims/* outbox/*"),
        ("s3:PutObject", "{data}/results/*", ""),
        ("s3:PutObject", "{data}/messages/*", ""),
        ("s3:PutObject", "{data}/outbox/*", ""),
        ("sns:Publish", "{topic}", ""),
        ("secretsmanager:GetSecretValue", "{secret}", ""),
    },
    "RealtimeFunctionRole": {
        ("dynamodb:GetItem", "{table}", "LeadingKeys req#*"),
        ("dynamodb:PutItem", "{table}", "LeadingKeys req#*"),
        ("dynamodb:UpdateItem", "{table}", "LeadingKeys req#*"),
        ("dynamodb:BatchGetItem", "{table}", "LeadingKeys req#*"),
        ("dynamodb:UpdateItem", "{table}", "LeadingKeys batch#* budget#* hold#*"),
        ("dynamodb:GetItem", "{table}", "LeadingKeys batch#*"),
        ("s3:GetObject", "{data}/bodies/*", ""),
        ("s3:GetObject", "{data}/answers/*", ""),
        ("s3:GetObject", "{data}/outbox/*", ""),
        ("s3:ListBucket", "{data}", "prefix outbox/* answers/*"),
        ("s3:PutObject", "{data}/answers/*", ""),
        ("s3:PutObject", "{data}/outbox/*", ""),
        ("s3:PutObject", "{data}/messages/*", ""),
        ("sns:Publish", "{topic}", ""),
        ("sqs:ChangeMessageVisibility", "{realtime_queue}", ""),
        ("secretsmanager:GetSecretValue", "{secret}", ""),
    },
    "PollerStateMachineRole": {
        ("lambda:InvokeFunction", "{CheckBatchFunction}", ""),
        ("lambda:InvokeFunction", "{CollectResultsFunction}", ""),
        ("dynamodb:UpdateItem", "{table}", "LeadingKeys batch#*"),
        *{
            (f"logs:{a}", "*", "")
            for a in (
                "CreateLogDelivery",
                "GetLogDelivery",
                "UpdateLogDelivery",
                "DeleteLogDelivery",
                "ListLogDeliveries",
                "PutResourcePolicy",
                "DescribeResourcePolicies",
                "DescribeLogGroups",
            )
        },
    },
}
# Granted only when the secret is encrypted with a customer-managed key (ApiKeyKmsKeyArn).
DECRYPT = ("kms:Decrypt", KEY_ARN, "ViaService secretsmanager")
DECRYPTING_ROLES = {
    "SubmitterFunctionRole",
    "CheckBatchFunctionRole",
    "CollectResultsFunctionRole",
    "RealtimeFunctionRole",
}


class _NoManagedPolicies:
    """The translator asks for the account's managed policies only for names it cannot place."""

    def load(self) -> dict[str, str]:
        return {}


def _zip(folder: Path) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for path in sorted(folder.rglob("*.py")):
            archive.write(path, path.relative_to(folder))
    return out.getvalue()


def package(s3: Any, bucket: str) -> dict[str, Any]:
    """template.yaml as `sam package` leaves it: code in S3, the definition inline."""
    template = yaml_parse((ROOT / "template.yaml").read_text())
    for name, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                s3.put_object(Bucket=bucket, Key=f"{name}.zip", Body=_zip(ROOT / props[key]))
                props[key] = f"s3://{bucket}/{name}.zip"
        if "DefinitionUri" in props:
            props["Definition"] = json.loads((ROOT / props.pop("DefinitionUri")).read_text())
    return template


def translate(parameters: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    s3 = boto3.client("s3", region_name=REGION)
    # Bucket names are global: each account packages into a bucket of its own.
    bucket = f"relay-artifacts-{os.environ.get('MOTO_ACCOUNT_ID', ACCOUNT)}"
    s3.create_bucket(Bucket=bucket)
    template = package(s3, bucket)
    return template, transform(template, parameters, _NoManagedPolicies())


_create_function = LambdaFunction.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]


def _reserving(cls: Any, name: str, spec: dict[str, Any], account: str, region: str, **kw: Any) -> Any:
    """A function created as CloudFormation creates it: then its reservation, through the API that
    checks the account's quota (moto's CloudFormation would set it unchecked)."""
    fn = _create_function(cls, name, spec, account, region, **kw)
    reserved, fn.reserved_concurrency = fn.reserved_concurrency, None
    if reserved is not None:
        get_backend(account, region).put_function_concurrency(fn.function_name, reserved)
    return fn


def deploy(parameters: dict[str, str], name: str = "batch-relay") -> dict[str, Any]:
    """Translate with these parameters and create the stack; its description and resources."""
    _, translated = translate(parameters)
    cfn = boto3.client("cloudformation", region_name=REGION)
    with mock.patch.object(LambdaFunction, "create_from_cloudformation_json", classmethod(_reserving)):
        cfn.create_stack(
            StackName=name,
            TemplateBody=json.dumps(translated),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    pages = cfn.get_paginator("list_stack_resources").paginate(StackName=name)
    physical = {
        r["LogicalResourceId"]: r.get("PhysicalResourceId", "")
        for page in pages
        for r in page["StackResourceSummaries"]
    }
    return {"stack": stack, "physical": physical, "translated": translated, "policies": _policies(name)}


def _policies(name: str) -> dict[str, Any]:
    """Each topic and queue policy as CloudFormation would apply it: moto creates none of them, but
    its CloudFormation resolves their intrinsics (conditions, lists, joins, the resources' ARNs)
    against the stack it created."""
    backend = cloudformation_backends[os.environ.get("MOTO_ACCOUNT_ID", ACCOUNT)][REGION]
    (stack,) = [s for s in backend.stacks.values() if s.name == name]
    kinds = ("AWS::SNS::TopicPolicy", "AWS::SQS::QueuePolicy")
    documents = {}
    for logical, resource in stack.template_dict["Resources"].items():
        if resource["Type"] in kinds:
            document = clean_json(resource["Properties"]["PolicyDocument"], stack.resource_map)
            # A condition's AWS::NoValue leaves no statement behind.
            document["Statement"] = [s for s in document["Statement"] if s is not None]
            documents[logical] = document
    return documents


def _secret(name: str = "batch-relay/anthropic-api-key") -> str:
    answer = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name=name, SecretString="sk-ant-test"
    )
    return str(answer["ARN"])


@pytest.fixture(scope="module")
def deployed() -> Iterator[dict[str, Any]]:
    with mock.patch.dict(os.environ, ENV), mock_aws(config={"lambda": {"use_docker": False}}):
        secret = _secret()
        yield deploy({"ApiKeySecretArn": secret, "ApiKeyKmsKeyArn": KEY_ARN}) | {"secret": secret}


def _names(deployed: dict[str, Any]) -> dict[str, str]:
    p = deployed["physical"]
    lam = boto3.client("lambda", region_name=REGION)
    realtime_queue = boto3.client("sqs", region_name=REGION).get_queue_attributes(
        QueueUrl=p["RealtimeQueue"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    names = {
        "table": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{p['RequestTable']}",
        "inbox": f"arn:aws:s3:::{p['InboxBucket']}",
        "data": f"arn:aws:s3:::{p['PayloadBucket']}",
        "topic": p["CompletionTopic"],
        "state_machine": p["PollerStateMachine"],
        "secret": deployed["secret"],
        "executions": p["PollerStateMachine"].replace(":stateMachine:", ":execution:") + ":*",
        "realtime_queue": realtime_queue,
    }
    for fn in FUNCTIONS:
        names[fn] = lam.get_function_configuration(FunctionName=p[fn])["FunctionArn"]
    return names


def realtime_scaling(translated: dict[str, Any]) -> Any:
    """The scaling the translated template gives the realtime queue's event source."""
    (mapping,) = [
        r["Properties"]
        for r in translated["Resources"].values()
        if r["Type"] == "AWS::Lambda::EventSourceMapping"
        and r["Properties"]["FunctionName"] == {"Ref": "RealtimeFunction"}
    ]
    return mapping["ScalingConfig"]


def test_stack_is_created_with_every_output(deployed: dict[str, Any]) -> None:
    stack, p = deployed["stack"], deployed["physical"]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    sqs = boto3.client("sqs", region_name=REGION)
    queue_arn = sqs.get_queue_attributes(QueueUrl=p["RequestQueue"], AttributeNames=["QueueArn"])
    assert outputs == {
        "RequestQueueUrl": p["RequestQueue"],
        "RequestQueueArn": queue_arn["Attributes"]["QueueArn"],
        "DeadLetterQueueUrl": p["RequestDeadLetterQueue"],
        "CompletionTopicArn": p["CompletionTopic"],
        "RequestTableName": p["RequestTable"],
        "PayloadBucketName": p["PayloadBucket"],
        "InboxBucketName": p["InboxBucket"],
        "PollerStateMachineArn": p["PollerStateMachine"],
        "RealtimeQueueUrl": p["RealtimeQueue"],
        "DashboardName": p["RelayDashboard"],
    }
    assert p["InboxBucket"] != p["PayloadBucket"]


def test_each_function_has_its_environment_role_and_event_source(deployed: dict[str, Any]) -> None:
    p, names = deployed["physical"], _names(deployed)
    lam = boto3.client("lambda", region_name=REGION)
    shared = {
        "TABLE_NAME": p["RequestTable"],
        "BUCKET_NAME": p["PayloadBucket"],
        "TOPIC_ARN": p["CompletionTopic"],
        "API_KEY_SECRET_ARN": deployed["secret"],
        "DEFAULT_TIER": "standard",
        "POWERTOOLS_SERVICE_NAME": "batch-relay",
        # Traces never hold a handler's response or an exception's text.
        "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
        "POWERTOOLS_TRACER_CAPTURE_ERROR": "false",
    }
    realtime = {"REALTIME_QUEUE_URL": p["RealtimeQueue"]}
    own = {
        "BufferFunction": {"INBOX_BUCKET_NAME": p["InboxBucket"]},
        "SubmitterFunction": {"STATE_MACHINE_ARN": p["PollerStateMachine"]} | realtime,
        "CheckBatchFunction": realtime,
        "CollectResultsFunction": {"COLLECT_BUDGET_SECONDS": "600"},
        "RealtimeFunction": realtime,
    }
    roles = boto3.client("iam", region_name=REGION)
    for fn in FUNCTIONS:
        config = lam.get_function_configuration(FunctionName=p[fn])
        env = {k: str(v) for k, v in config["Environment"]["Variables"].items()}
        assert shared.items() <= env.items(), fn
        assert own[fn].items() <= env.items(), fn
        # Only the buffer reads the inbox; only the submitter starts pollers.
        assert ("INBOX_BUCKET_NAME" in env) == (fn == "BufferFunction"), fn
        assert ("STATE_MACHINE_ARN" in env) == (fn == "SubmitterFunction"), fn
        # The realtime queue: sent to by the submitter and the check step, and the realtime
        # function hides a message there for a retry-after.
        uses_realtime = fn in ("SubmitterFunction", "CheckBatchFunction", "RealtimeFunction")
        assert ("REALTIME_QUEUE_URL" in env) == uses_realtime, fn
        assert config["Role"] == roles.get_role(RoleName=p[f"{fn}Role"])["Role"]["Arn"], fn
        assert config["Runtime"] == "python3.13", fn
        props = deployed["translated"]["Resources"][fn]["Properties"]
        assert props["Architectures"] == ["arm64"], fn
        assert props["Layers"] == [{"Ref": _layer(deployed)}], fn

    sources = lam.list_event_source_mappings(FunctionName=p["BufferFunction"])["EventSourceMappings"]
    queue = boto3.client("sqs", region_name=REGION).get_queue_attributes(
        QueueUrl=p["RequestQueue"], AttributeNames=["QueueArn", "VisibilityTimeout"]
    )["Attributes"]
    assert [
        (s["EventSourceArn"], s["BatchSize"], s["MaximumBatchingWindowInSeconds"], s["FunctionResponseTypes"])
        for s in sources
    ] == [(queue["QueueArn"], 100, 5, ["ReportBatchItemFailures"])]
    # The realtime function takes one request a message, RealtimeConcurrency at once at most.
    sources = lam.list_event_source_mappings(FunctionName=p["RealtimeFunction"])["EventSourceMappings"]
    assert [(s["EventSourceArn"], s["BatchSize"], s["FunctionResponseTypes"]) for s in sources] == [
        (names["realtime_queue"], 1, ["ReportBatchItemFailures"])
    ]
    assert realtime_scaling(deployed["translated"]) == {"MaximumConcurrency": {"Ref": "RealtimeConcurrency"}}
    for fn in ("SubmitterFunction", "CheckBatchFunction", "CollectResultsFunction"):
        assert lam.list_event_source_mappings(FunctionName=p[fn])["EventSourceMappings"] == [], fn

    events = boto3.client("events", region_name=REGION)
    rule = events.describe_rule(Name=p["SubmitterFunctionTick"])
    targets = events.list_targets_by_rule(Rule=p["SubmitterFunctionTick"])["Targets"]
    assert rule["ScheduleExpression"] == "rate(1 minute)"
    assert [(t["Arn"], t["RetryPolicy"]["MaximumRetryAttempts"]) for t in targets] == [
        (names["SubmitterFunction"], 0)
    ]

    # The poller's steps are its Lambda tasks, by the functions' ARNs (CloudFormation substitutes
    # them into the definition; moto keeps the placeholders).
    sfn = boto3.client("stepfunctions", region_name=REGION)
    machine = sfn.describe_state_machine(stateMachineArn=p["PollerStateMachine"])
    states = json.loads(machine["definition"])["States"]
    substitutions = deployed["translated"]["Resources"]["PollerStateMachine"]["Properties"][
        "DefinitionSubstitutions"
    ]
    assert states["CheckBatch"]["Parameters"]["FunctionName"] == "${CheckFunctionArn}"
    assert states["CollectResults"]["Parameters"]["FunctionName"] == "${CollectFunctionArn}"
    assert states["RecordFailure"]["Parameters"]["TableName"] == "${TableName}"
    assert substitutions == {
        "CheckFunctionArn": {"Fn::GetAtt": ["CheckBatchFunction", "Arn"]},
        "CollectFunctionArn": {"Fn::GetAtt": ["CollectResultsFunction", "Arn"]},
        "TableName": {"Ref": "RequestTable"},
    }
    assert machine["roleArn"] == roles.get_role(RoleName=p["PollerStateMachineRole"])["Role"]["Arn"]


def _layer(deployed: dict[str, Any]) -> str:
    resources = deployed["translated"]["Resources"]
    (layer,) = [k for k, r in resources.items() if r["Type"] == "AWS::Lambda::LayerVersion"]
    return layer


def test_timeouts_fit_the_queue_and_the_collect_budget(deployed: dict[str, Any]) -> None:
    p = deployed["physical"]
    lam = boto3.client("lambda", region_name=REGION)
    buffer = lam.get_function_configuration(FunctionName=p["BufferFunction"])
    visibility = boto3.client("sqs", region_name=REGION).get_queue_attributes(
        QueueUrl=p["RequestQueue"], AttributeNames=["VisibilityTimeout"]
    )["Attributes"]["VisibilityTimeout"]
    # Lambda's advice for SQS sources: six times the function's timeout, or messages come back twice.
    assert int(visibility) >= 6 * buffer["Timeout"]
    # A realtime call runs up to the function's timeout: its message stays hidden meanwhile.
    realtime = lam.get_function_configuration(FunctionName=p["RealtimeFunction"])
    hidden = boto3.client("sqs", region_name=REGION).get_queue_attributes(
        QueueUrl=p["RealtimeQueue"], AttributeNames=["VisibilityTimeout"]
    )["Attributes"]["VisibilityTimeout"]
    assert int(hidden) > realtime["Timeout"]
    collect = lam.get_function_configuration(FunctionName=p["CollectResultsFunction"])
    budget = int(collect["Environment"]["Variables"]["COLLECT_BUDGET_SECONDS"])
    # collect stops SAFETY_MS (60 s) before its timeout to write its last chunk.
    assert budget + 60 <= collect["Timeout"]


def _grants(document: dict[str, Any]) -> set[tuple[str, str, str]]:
    out: set[tuple[str, str, str]] = set()
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        condition = statement.get("Condition", {})
        summary = ""
        if condition:
            ((operator, values),) = condition.items()
            ((key, value),) = values.items()
            # ForAllValues: every key the call touches must match (ForAnyValue would let one do).
            short, want = {
                "dynamodb:LeadingKeys": ("LeadingKeys", "ForAllValues:StringLike"),
                "s3:prefix": ("prefix", "StringLike"),
                "kms:ViaService": ("ViaService", "StringEquals"),
            }[key]
            assert operator == want, statement
            shown = " ".join(value) if isinstance(value, list) else value.split(".")[0]
            summary = f"{short} {shown}"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"]
        resources = resources if isinstance(resources, list) else [resources]
        out |= {(a, r, summary) for a in actions for r in resources}
    return out


def test_each_role_grants_exactly_its_table(deployed: dict[str, Any]) -> None:
    p, names = deployed["physical"], _names(deployed)
    iam = boto3.client("iam", region_name=REGION)
    for role, expected in ROLES.items():
        name = p[role]
        granted: set[tuple[str, str, str]] = set()
        for policy_name in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            document = iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"]
            granted |= _grants(ast.literal_eval(document) if isinstance(document, str) else document)
        want = {(a, r.format(**names), c) for a, r, c in expected}
        if role in DECRYPTING_ROLES:  # this stack names a customer-managed key
            want.add(DECRYPT)
        assert granted == want, role
    # What SAM adds as managed policies: logs for each function, X-Ray for all, and the SQS event
    # source's receive/delete (SAM grants it on every queue; each mapping reads one queue). Hiding a
    # realtime message for a retry-after is not part of it: the realtime role grants that itself.
    basic, xray = "service-role/AWSLambdaBasicExecutionRole", "AWSXrayWriteOnlyAccess"
    managed = {
        "BufferFunctionRole": {basic, xray, "service-role/AWSLambdaSQSQueueExecutionRole"},
        "SubmitterFunctionRole": {basic, xray},
        "CheckBatchFunctionRole": {basic, xray},
        "CollectResultsFunctionRole": {basic, xray},
        "RealtimeFunctionRole": {basic, xray, "service-role/AWSLambdaSQSQueueExecutionRole"},
        "PollerStateMachineRole": {xray},
    }
    resources = deployed["translated"]["Resources"]
    for role, names_ in managed.items():
        arns = resources[role]["Properties"].get("ManagedPolicyArns", [])
        assert {a.removeprefix("arn:aws:iam::aws:policy/") for a in arns} == names_, role


def test_kms_decrypt_is_granted_only_with_a_customer_key() -> None:
    with mock.patch.dict(os.environ, ENV), mock_aws(config={"lambda": {"use_docker": False}}):
        without = deploy({"ApiKeySecretArn": _secret("no-customer-key")}, name="no-customer-key")
        iam = boto3.client("iam", region_name=REGION)
        for role in ROLES:
            name = without["physical"][role]
            for policy_name in iam.list_role_policies(RoleName=name)["PolicyNames"]:
                document = iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"]
                assert "kms:" not in str(document), role
    assert "ApiKeyDecryptPolicy" not in without["physical"]
    resource = without["translated"]["Resources"]["ApiKeyDecryptPolicy"]
    assert resource["Condition"] == "HasApiKeyKmsKey"
    assert without["translated"]["Parameters"]["ApiKeyKmsKeyArn"]["Default"] == ""


def _reserved(physical: dict[str, str]) -> dict[str, int]:
    lam = boto3.client("lambda", region_name=REGION)
    out = {}
    for fn in FUNCTIONS:
        got = lam.get_function_concurrency(FunctionName=physical[fn]).get("ReservedConcurrentExecutions")
        if got is not None:
            out[fn] = int(got)
    return out


def _account(n: int, quota: str | None) -> dict[str, str]:
    """An account of its own (no other stack's reservations count against its quota), with this
    concurrency quota (None: moto checks none)."""
    return (
        ENV | {"MOTO_ACCOUNT_ID": f"{n:012d}"} | ({"MOTO_LAMBDA_CONCURRENCY_QUOTA": quota} if quota else {})
    )


def test_default_deploy_succeeds_on_an_account_with_a_low_concurrency_quota() -> None:
    # A new account's quota is 10: Lambda refuses any reservation that leaves under 100 unreserved.
    with mock.patch.dict(os.environ, _account(1, "10")), mock_aws(config={"lambda": {"use_docker": False}}):
        stack = deploy({"ApiKeySecretArn": _secret()})
        assert stack["stack"]["StackStatus"] == "CREATE_COMPLETE"
        assert _reserved(stack["physical"]) == {}
        # Realtime calls stay bounded without a reservation: the event source's maximum concurrency.
        lam = boto3.client("lambda", region_name=REGION)
        (source,) = lam.list_event_source_mappings(FunctionName=stack["physical"]["RealtimeFunction"])[
            "EventSourceMappings"
        ]
    assert realtime_scaling(stack["translated"]) == {"MaximumConcurrency": {"Ref": "RealtimeConcurrency"}}
    assert source["BatchSize"] == 1
    assert stack["translated"]["Parameters"]["RealtimeConcurrency"]["Default"] == 5


@pytest.mark.parametrize(("account", "quota"), [(2, None), (3, "10")])
def test_reserve_concurrency_reserves_what_it_asks_and_a_low_quota_refuses_it(
    account: int, quota: str | None
) -> None:
    asked = {"ReserveConcurrency": "true", "RealtimeConcurrency": "7"}
    with (
        mock.patch.dict(os.environ, _account(account, quota)),
        mock_aws(config={"lambda": {"use_docker": False}}),
    ):
        if quota is not None:
            # What Lambda answers a stack that reserves on a new account (moto's CloudFormation
            # passes Lambda's JSON error on as its answer, which botocore cannot parse as XML).
            refused = (ClientError, ResponseParserError)
            with pytest.raises(refused, match="UnreservedConcurrentExecution below its minimum"):
                deploy({"ApiKeySecretArn": _secret()} | asked)
            return
        stack = deploy({"ApiKeySecretArn": _secret()} | asked)
        assert stack["stack"]["StackStatus"] == "CREATE_COMPLETE"
        assert _reserved(stack["physical"]) == {"SubmitterFunction": 1, "RealtimeFunction": 7}


def test_topic_buckets_and_logs_as_cloudformation_receives_them(deployed: dict[str, Any]) -> None:
    resources = deployed["translated"]["Resources"]
    topic = resources["CompletionTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    by_sid = {s["Sid"]: s for s in topic if isinstance(s, dict) and "Sid" in s}
    expected = [
        {"Fn::GetAtt": ["BufferFunctionRole", "Arn"]},
        {"Fn::GetAtt": ["SubmitterFunctionRole", "Arn"]},
        {"Fn::GetAtt": ["CollectResultsFunctionRole", "Arn"]},
        {"Fn::GetAtt": ["RealtimeFunctionRole", "Arn"]},
    ]
    # Exactly the roles granted sns:Publish on the topic: one granted it but left out here would
    # have every publish denied by OnlyTheRelayPublishes.
    publishers = {role for role, grants in ROLES.items() if ("sns:Publish", "{topic}", "") in grants}
    assert {e["Fn::GetAtt"][0] for e in expected} == publishers
    deny = by_sid["OnlyTheRelayPublishes"]
    assert (deny["Effect"], deny["Principal"], deny["Action"]) == ("Deny", "*", "sns:Publish")
    assert deny["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": expected}}
    assert by_sid["RelayPublishes"]["Principal"] == {"AWS": expected}
    tls = by_sid["DenyInsecureTransport"]
    assert tls["Effect"] == "Deny" and tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}

    p = deployed["physical"]
    for bucket, policy in (("InboxBucket", "InboxBucketPolicy"), ("PayloadBucket", "PayloadBucketPolicy")):
        props = resources[bucket]["Properties"]
        (rule,) = props["LifecycleConfiguration"]["Rules"]
        assert (
            rule["Status"] == "Enabled" and rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1
        )
        assert set(props["PublicAccessBlockConfiguration"].values()) == {True}
        assert len(props["PublicAccessBlockConfiguration"]) == 4
        (encryption,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        (statement,) = resources[policy]["Properties"]["PolicyDocument"]["Statement"]
        assert (
            statement["Effect"] == "Deny" and statement["Condition"]["Bool"]["aws:SecureTransport"] == "false"
        )
        assert resources[policy]["Properties"]["Bucket"] == {"Ref": bucket}
    # Offloaded bodies outlive the 14 days SQS keeps their messages.
    inbox = resources["InboxBucket"]["Properties"]["LifecycleConfiguration"]["Rules"][0]
    assert inbox["ExpirationInDays"] == {"Ref": "InboxExpiryDays"}
    assert deployed["translated"]["Parameters"]["InboxExpiryDays"]["MinValue"] >= 15

    logs = boto3.client("logs", region_name=REGION)
    groups = {g["logGroupName"]: g for g in logs.describe_log_groups()["logGroups"]}
    for fn in FUNCTIONS:
        group = resources[fn]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        assert groups[p[group]]["retentionInDays"] == 30, fn
    machine = resources["PollerStateMachine"]["Properties"]["LoggingConfiguration"]
    arn = machine["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"]
    assert groups[p[arn["Fn::GetAtt"][0]]]["retentionInDays"] == 30

    invoke = [r for r in resources.values() if r["Type"] == "AWS::Lambda::EventInvokeConfig"]
    assert [(r["Properties"]["FunctionName"], r["Properties"]["MaximumRetryAttempts"]) for r in invoke] == [
        ({"Ref": "SubmitterFunction"}, 0)
    ]


def _rule_holds(rule: dict[str, Any], values: dict[str, str]) -> bool:
    """Evaluate one template rule (the functions CloudFormation allows in rules that ours uses)."""

    def ev(node: Any) -> Any:
        if isinstance(node, dict):
            ((fn, arg),) = node.items()
            if fn == "Ref":
                return values[arg]
            if fn == "Fn::Not":
                return not ev(arg[0])
            if fn == "Fn::Equals":
                return ev(arg[0]) == ev(arg[1])
            if fn == "Fn::Contains":
                return ev(arg[1]) in [ev(v) for v in arg[0]]
            raise AssertionError(f"rule function {fn} not evaluated here")
        return node

    if "RuleCondition" in rule and not ev(rule["RuleCondition"]):
        return True
    return all(ev(a["Assert"]) for a in rule["Assertions"])


@pytest.mark.parametrize(
    ("size", "window", "accepted"),
    [("10", "0", True), ("11", "0", False), ("100", "0", False), ("100", "1", True), ("1", "0", True)],
)
def test_batch_window_rule(size: str, window: str, accepted: bool) -> None:
    """Lambda refuses an SQS mapping with BatchSize over 10 and no window: the stack refuses first."""
    rules = yaml_parse((ROOT / "template.yaml").read_text())["Rules"]
    values = {"BufferBatchSize": size, "BufferBatchWindowSeconds": window}
    assert all(_rule_holds(rule, values) for rule in rules.values()) is accepted


# Subscriptions: who may subscribe what to the completion topic, decided on the topic policy as
# CloudFormation applies it (tests/resource_policy.py says why not by moto's SNS).
SUBSCRIBERS = ("111122223333", "444455556666")
# The stack with subscriber accounts lives in an account of its own, beside the module's stack.
OWNER = _account(5, None)["MOTO_ACCOUNT_ID"]
FOREIGN = "999999999999"


def _principal(account: str) -> str:
    return f"arn:aws:iam::{account}:role/subscriber"


def _queue(account: str) -> str:
    return f"arn:aws:sqs:{REGION}:{account}:completions"


def _function(account: str) -> str:
    return f"arn:aws:lambda:{REGION}:{account}:function:on-completion"


FORBIDDEN_PROTOCOLS = {
    "http": "http://hooks.example.com/completions",
    "https": "https://hooks.example.com/completions",
    "email": "someone@example.com",
    "email-json": "someone@example.com",
    "sms": "+15555550100",
    "application": f"arn:aws:sns:{REGION}:{OWNER}:endpoint/GCM/app/0f1e2d3c",
    # A delivery stream may forward to any HTTP endpoint or third party.
    "firehose": f"arn:aws:firehose:{REGION}:{OWNER}:deliverystream/completions",
}
ONLY_SQS_LAMBDA, ONLY_ALLOWED_ACCOUNTS, NO_GRANT = (
    "OnlySqsOrLambdaSubscriptions",
    "OnlyEndpointsInAllowedAccounts",
    "no grant",
)
# (who subscribes, protocol, endpoint, the statement that refuses it, or None when allowed)
SUBSCRIPTIONS = [
    *[(OWNER, p, e, ONLY_SQS_LAMBDA) for p, e in FORBIDDEN_PROTOCOLS.items()],
    *[(SUBSCRIBERS[0], p, e, ONLY_SQS_LAMBDA) for p, e in FORBIDDEN_PROTOCOLS.items()],
    # An email address or URL that spells an allowed ARN is still refused by its protocol.
    (OWNER, "email-json", _queue(OWNER), ONLY_SQS_LAMBDA),
    (OWNER, "sqs", _queue(FOREIGN), ONLY_ALLOWED_ACCOUNTS),
    (OWNER, "lambda", _function(FOREIGN), ONLY_ALLOWED_ACCOUNTS),
    (SUBSCRIBERS[0], "sqs", _queue(FOREIGN), ONLY_ALLOWED_ACCOUNTS),
    # A foreign function named like a listed account's id.
    (
        OWNER,
        "lambda",
        f"arn:aws:lambda:{REGION}:{FOREIGN}:function:{SUBSCRIBERS[0]}",
        ONLY_ALLOWED_ACCOUNTS,
    ),
    (
        OWNER,
        "lambda",
        f"arn:aws:lambda:{REGION}:{FOREIGN}:function:{SUBSCRIBERS[0]}:live",
        ONLY_ALLOWED_ACCOUNTS,
    ),
    # An unlisted account has no grant, even for a queue in a listed account.
    (FOREIGN, "sqs", _queue(FOREIGN), NO_GRANT),
    (FOREIGN, "sqs", _queue(SUBSCRIBERS[0]), NO_GRANT),
    (OWNER, "sqs", _queue(OWNER), None),
    (OWNER, "lambda", _function(OWNER), None),
    (OWNER, "lambda", _function(OWNER) + ":live", None),
    (OWNER, "sqs", _queue(SUBSCRIBERS[1]), None),
    (SUBSCRIBERS[0], "sqs", _queue(SUBSCRIBERS[0]), None),
    (SUBSCRIBERS[1], "lambda", _function(SUBSCRIBERS[1]), None),
    (SUBSCRIBERS[1], "sqs", _queue(OWNER), None),
]


@pytest.fixture(scope="module")
def with_subscribers() -> dict[str, Any]:
    """A stack deployed with subscriber accounts; only its names and resolved policies are kept."""
    with mock.patch.dict(os.environ, _account(5, None)), mock_aws(config={"lambda": {"use_docker": False}}):
        parameters = {"ApiKeySecretArn": _secret(), "SubscriberAccountIds": ",".join(SUBSCRIBERS)}
        return deploy(parameters, name="with-subscribers")


def _subscribe(
    topic: str, who: str, protocol: str, endpoint: str, tls: bool = True
) -> resource_policy.Request:
    context = {"sns:Protocol": protocol, "sns:Endpoint": endpoint, "aws:SecureTransport": str(tls).lower()}
    return resource_policy.Request(_principal(who), "sns:Subscribe", topic, context)


@pytest.mark.parametrize(("who", "protocol", "endpoint", "refused_by"), SUBSCRIPTIONS)
def test_subscriptions_only_to_queues_and_functions_in_allowed_accounts(
    with_subscribers: dict[str, Any], who: str, protocol: str, endpoint: str, refused_by: str | None
) -> None:
    policy = with_subscribers["policies"]["CompletionTopicPolicy"]
    topic = with_subscribers["physical"]["CompletionTopic"]
    request = _subscribe(topic, who, protocol, endpoint)
    # The subscriber's own IAM policy is assumed to grant sns:Subscribe on everything: the topic
    # policy alone must refuse what it refuses.
    assert resource_policy.allowed(policy, request, owner=OWNER) is (refused_by is None)
    if refused_by not in (None, NO_GRANT):
        # Without the policy's denials it would go through; the statement named refuses it alone.
        allows = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
        (named,) = [s for s in policy["Statement"] if s.get("Sid") == refused_by]
        assert resource_policy.allowed({"Statement": allows}, request, owner=OWNER)
        assert not resource_policy.allowed({"Statement": [*allows, named]}, request, owner=OWNER)
    if refused_by is None:
        # ...and over plain HTTP, never.
        plain = _subscribe(topic, who, protocol, endpoint, tls=False)
        assert not resource_policy.allowed(policy, plain, owner=OWNER)


def test_without_subscriber_accounts_only_this_accounts_queues_and_functions(
    deployed: dict[str, Any],
) -> None:
    policy = deployed["policies"]["CompletionTopicPolicy"]
    topic = deployed["physical"]["CompletionTopic"]
    assert [s["Sid"] for s in policy["Statement"] if s["Effect"] == "Allow"] == ["RelayPublishes"]
    for who, endpoint, allowed in [
        (ACCOUNT, _queue(ACCOUNT), True),
        (ACCOUNT, _function(ACCOUNT), True),
        (ACCOUNT, _queue(SUBSCRIBERS[0]), False),
        (SUBSCRIBERS[0], _queue(SUBSCRIBERS[0]), False),
    ]:
        protocol = endpoint.split(":")[2]
        request = _subscribe(topic, who, protocol, endpoint)
        assert resource_policy.allowed(policy, request, owner=ACCOUNT) is allowed, (who, endpoint)


@pytest.mark.parametrize(
    ("ids", "accepted"),
    [
        ("", True),
        ("111122223333", True),
        ("111122223333,444455556666", True),
        ("*", False),
        ("111122223333,*", False),
        ("1111-2222-3333", False),
        ("11112222333", False),
        ("111122223333, 444455556666", False),
        ("arn:aws:iam::111122223333:root", False),
    ],
)
def test_subscriber_account_ids_are_twelve_digits_each(ids: str, accepted: bool) -> None:
    """CloudFormation matches AllowedPattern against each value of a CommaDelimitedList."""
    spec = yaml_parse((ROOT / "template.yaml").read_text())["Parameters"]["SubscriberAccountIds"]
    assert spec["Type"] == "CommaDelimitedList"
    pattern = re.compile(spec["AllowedPattern"])
    assert all(pattern.fullmatch(v) for v in ids.split(",")) is accepted


def test_cfn_lint_applies_the_account_pattern_to_each_id() -> None:
    """cfn-lint reads the pattern the same way (on the parameter's Default): a list of two ids
    passes, one wildcard among them does not."""
    text = (ROOT / "template.yaml").read_text()
    head, tail = text.split("  SubscriberAccountIds:\n", 1)

    def default_findings(ids: str) -> list[str]:
        changed = head + "  SubscriberAccountIds:\n" + tail.replace('Default: ""', f'Default: "{ids}"', 1)
        return [m.rule.id for m in cfnlint.api.lint(changed) if m.rule.id == "E2015"]

    assert default_findings("111122223333,444455556666") == []
    assert default_findings("111122223333,*") == ["E2015"]


def test_only_the_relay_sends_to_the_realtime_queue(deployed: dict[str, Any]) -> None:
    """Each realtime message is a call at list price: the queue policy refuses every sender but
    the roles granted sqs:SendMessage on it, whatever the sender's own IAM policy allows."""
    policy, p = deployed["policies"]["RequestQueuePolicy"], deployed["physical"]
    names = _names(deployed)
    iam = boto3.client("iam", region_name=REGION)
    senders = {
        role for role, grants in ROLES.items() if ("sqs:SendMessage", "{realtime_queue}", "") in grants
    }
    assert senders == {"SubmitterFunctionRole", "CheckBatchFunctionRole"}
    request_queue = boto3.client("sqs", region_name=REGION).get_queue_attributes(
        QueueUrl=p["RequestQueue"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    for role in ROLES:
        arn = iam.get_role(RoleName=p[role])["Role"]["Arn"]
        send = resource_policy.Request(arn, "sqs:SendMessage", names["realtime_queue"])
        assert resource_policy.allowed(policy, send, owner=ACCOUNT) is (role in senders), role
    someone = f"arn:aws:iam::{ACCOUNT}:role/anyone-in-the-account"
    send = resource_policy.Request(someone, "sqs:SendMessage", names["realtime_queue"])
    assert not resource_policy.allowed(policy, send, owner=ACCOUNT)
    # Producers still send requests with their own IAM policy alone.
    produce = resource_policy.Request(someone, "sqs:SendMessage", request_queue)
    assert resource_policy.allowed(policy, produce, owner=ACCOUNT)
    assert not resource_policy.allowed(policy, produce, owner=ACCOUNT, identity_allows=False)


@pytest.mark.parametrize(
    ("arn", "accepted"),
    [
        (f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:batch-relay/anthropic-api-key-AbC123", True),
        (f"arn:aws-cn:secretsmanager:cn-north-1:{ACCOUNT}:secret:relay.key@team+1=x_y-a1B2c3", True),
        (f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:*", False),
        (f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:batch-relay/*", False),
        (f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:batch-relay/anthropic-api-key-*", False),
        # A partial ARN (no suffix) matches no secret in an IAM policy.
        (f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:batch-relay/anthropic-api-key", False),
        (f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:key-AbC12?", False),
        (f"arn:aws:secretsmanager:{REGION}:*:secret:key-AbC123", False),
    ],
)
def test_the_api_key_secret_is_one_secret_by_its_full_arn(arn: str, accepted: bool) -> None:
    spec = yaml_parse((ROOT / "template.yaml").read_text())["Parameters"]["ApiKeySecretArn"]
    assert (re.fullmatch(spec["AllowedPattern"], arn) is not None) is accepted


def test_a_secret_made_as_the_readme_says_fits_the_pattern(deployed: dict[str, Any]) -> None:
    spec = yaml_parse((ROOT / "template.yaml").read_text())["Parameters"]["ApiKeySecretArn"]
    assert re.fullmatch(spec["AllowedPattern"], deployed["secret"]), deployed["secret"]


# What parliament reports of the deployed policies that is kept, by (policy, finding), with why.
PARLIAMENT_KEPT: dict[tuple[str, str], str] = {
    # Its IAM data lists DescribeExecution under both `execution` and `express` resources and asks
    # for both; the poller is a Standard state machine, whose executions have no express ARN.
    ("SubmitterFunctionRole", "RESOURCE_MISMATCH"): "standard executions only",
}


def _documents(deployed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every policy document the stack applies: each role's inline policies, read back from IAM
    as CloudFormation created them, and the topic and queue policies."""
    p, iam = deployed["physical"], boto3.client("iam", region_name=REGION)
    out = {f"{k} (resource policy)": v for k, v in deployed["policies"].items()}
    for logical, resource in deployed["translated"]["Resources"].items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        for name in iam.list_role_policies(RoleName=p[logical])["PolicyNames"]:
            document = iam.get_role_policy(RoleName=p[logical], PolicyName=name)["PolicyDocument"]
            out[f"{logical}/{name}"] = ast.literal_eval(document) if isinstance(document, str) else document
    return out


def test_parliament_finds_nothing_unexplained_in_the_stacks_policies(deployed: dict[str, Any]) -> None:
    from parliament import analyze_policy_string

    found: dict[tuple[str, str], str] = {}
    documents = _documents(deployed)
    assert len(documents) >= 8, sorted(documents)
    for where, document in documents.items():
        for finding in analyze_policy_string(json.dumps(document)).findings:
            found[(where.split("/")[0], finding.issue)] = f"{finding.detail}"
    unexplained = {k: v for k, v in found.items() if k not in PARLIAMENT_KEPT}
    assert not unexplained, "\n".join(f"{k}: {v}" for k, v in sorted(unexplained.items()))
    stale = set(PARLIAMENT_KEPT) - set(found)
    assert not stale, f"kept findings parliament no longer reports: {sorted(stale)}"
