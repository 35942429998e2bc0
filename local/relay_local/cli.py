"""`relay-local`: run the relay's functions on this machine, with no AWS account and no Docker.

    relay-local demo                                      # the whole pipeline, see --help
    relay-local chaos --seeds 200                         # the promises under random faults
    relay-local live                                      # a few real requests (ANTHROPIC_API_KEY)
    relay-local invoke BufferFunction events/buffer.json

starts the local stack (moto, built from template.yaml) and the Anthropic emulator (or uses the
real API when ANTHROPIC_API_KEY is set), runs the function the template names with the event, and
prints its return value, as `sam local invoke` would, then the completions the run published on
the topic (the collect step's, the realtime function's, the buffer's rejections).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from relay_local.api import emulated


def invoke(function: str, event_path: str) -> int:
    from relay_local.stack import LocalStack

    event = json.loads(Path(event_path).read_text())
    with emulated() as (env, emulator), LocalStack(env=env) as stack:
        inbox = stack.subscribe()
        if function not in stack.functions:
            print(f"error: no function {function!r} in template.yaml; there are {sorted(stack.functions)}")
            return 2
        if isinstance(event, dict) and {"batch_id", "ref"} <= event.keys():
            # A poller step's event names a batch: make it exist, as the submitter would have.
            stack.seed_batch(event["batch_id"], event["ref"], emulator)
        if function == "RealtimeFunction":
            # Each realtime message names a request waiting for its answer: make it wait.
            for record in event.get("Records", []):
                body = json.loads(record["body"])
                stack.seed_realtime(body["request_id"], body["ref"])
        try:
            result = stack.invoke(function, event)
        except Exception as exc:  # shown as Lambda reports an unhandled error
            print(json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}, indent=2))
            return 1
        published = stack.drain(inbox)
    print(json.dumps(result, indent=2, default=str))
    print(f"published on the completion topic: {len(published)}", file=sys.stderr)
    for completion in published:
        completion.pop("_attributes", None)
        print(json.dumps(completion, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        from relay_local import demo

        return demo.main(argv[1:])
    if argv[:1] == ["chaos"]:
        from relay_local import chaos

        return chaos.main(argv[1:])
    if argv[:1] == ["live"]:
        from relay_local import live

        return live.main(argv[1:])
    parser = argparse.ArgumentParser(prog="relay-local", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="the whole pipeline on a realistic workload (see `relay-local demo --help`)")
    sub.add_parser("chaos", help="the promises against random faults, seed by seed (see --help)")
    sub.add_parser("live", help="a few real requests against the real API (needs ANTHROPIC_API_KEY)")
    run = sub.add_parser("invoke", help="run one function of template.yaml with an event file")
    run.add_argument("function", help="logical id in template.yaml, e.g. BufferFunction")
    run.add_argument("event", help="JSON event file, e.g. events/buffer.json")
    args = parser.parse_args(argv)
    if args.command == "invoke":
        return invoke(args.function, args.event)
    return 2


if __name__ == "__main__":
    sys.exit(main())
