"""The request table: the only module that reads or writes DynamoDB.

One table holds two kinds of item:
- `req#<request_id>`: a request, its params (or an S3 pointer), status and attempts;
- `batch#<ref>`: a batch the relay made (the API keeps no metadata of ours), from the moment its
  requests are claimed until its results are collected.

- `lease#submitter`: which submitter run may claim requests, and until when (a short lease its
  run renews as it goes, see `Lease`);
- `batchid#<batch_id>`: which batch record owns an API batch, written before the record names it,
  so no two records ever take one batch and no batch the stack made is adopted again;
- `hold#<tier>`: a tier paused after an account problem, until when, and how many times in a row;
- `turn#<model>#<batch_id>`: how long one of the relay's batches of that model took (a sample the
  relay learns turnaround from, indexed under `turn#<model>` by when it ended, kept a week);
- `budget#<day>`: what the relay has committed to spend on that UTC day (`committed_micros`);
- `tiers`: every tier name a request was ever put in (`names`), so the requests of a tier that a
  later policy no longer names are still found and flushed.

The sparse `pending` index is the relay's work list. Its partition says what an item waits for:
a tier name (a pending request) or `live` (a batch not yet collected). Within a tier, a request
without a deadline sorts by its receipt time; one with a deadline by `by:<moment it must be
flushed>`, after every timestamp, so each kind is one range read oldest-first. An item leaves the index
when its state no longer needs attention: a claimed request leaves it (its batch's claim journal
in S3 says where it went), so claiming costs one index delete, not a move.

Items stay under 1 KB (request bodies live in S3), so each write costs one write unit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from boto3.dynamodb.conditions import Attr, Key
from pydantic import ValidationError

from . import aws, clock
from .errors import insist
from .observability import MetricUnit, logger, metrics
from .records import BatchRecord, Item, RequestItem

INDEX = "pending"
LIVE = "live"
# Budget amounts are counted in millionths of a dollar.
MICROS = 1_000_000
# Sort-key prefix of requests with a deadline: after every ISO timestamp ("2...").
BY = "by:"
TIERS = "tiers"


def request_key(request_id: str) -> str:
    return f"req#{request_id}"


def batch_key(ref: str) -> str:
    return f"batch#{ref}"


def plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal; the rest of the relay speaks plain JSON types."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | set | tuple):
        return [plain(v) for v in value]
    return value


class Budgets:
    """The daily budget's transactions: a commitment and what is given back of it are written
    with the item they are for, in one transaction each."""

    table: Any

    def commit(self, day: str, usd: float, cap: float, mark: str) -> bool:
        """Add `usd` to what day <day> has committed, unless that would pass `cap`, and have item
        <mark> (the batch or request committed for) say so, both in one transaction: no crash
        leaves a commitment no item names, which its retry would make again, and a transaction the
        SDK sends again is applied once (its request token). Amounts are kept in whole
        micro-dollars (commitments rounded up), so sums stay exact."""
        amount, limit = math.ceil(usd * MICROS), math.floor(cap * MICROS)
        if amount > limit:
            return False
        ttl = int(clock.parse(f"{day}T00:00:00Z")) + 40 * 86400
        # The table's client takes plain values (as the table does), not typed ones.
        budget = {
            "TableName": self.table.name,
            "Key": {"pk": f"budget#{day}"},
            "UpdateExpression": "SET kind = :k, #ttl = :ttl ADD committed_micros :n",
            "ConditionExpression": "attribute_not_exists(committed_micros) OR committed_micros <= :room",
            "ExpressionAttributeNames": {"#ttl": "ttl"},
            "ExpressionAttributeValues": {":k": "budget", ":n": amount, ":ttl": ttl, ":room": limit - amount},
        }
        marked = {
            "TableName": self.table.name,
            "Key": {"pk": mark},
            # A commitment made afresh (a realtime try after one given back) is not settled yet.
            "UpdateExpression": "SET budget_day = :day, budget_usd = :usd REMOVE budget_settled",
            "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeValues": {":day": day, ":usd": dynamo(usd)},
        }
        return self._transact([{"Update": budget}, {"Update": marked}])

    def give_back(self, day: str, usd: float, mark: str) -> bool:
        """Give back to day <day> what the commitment named on item <mark> did not spend (rounded
        down), and have the item say so, in one transaction that expects it unsaid: a transaction
        the SDK sends again after a lost answer is applied once (its request token, else its
        condition), so room is never freed twice. False when the item had already said so."""
        amount = math.floor(usd * MICROS)
        marked = {
            "TableName": self.table.name,
            "Key": {"pk": mark},
            "UpdateExpression": "SET budget_settled = :t",
            "ConditionExpression": "attribute_exists(pk) AND attribute_not_exists(budget_settled)",
            "ExpressionAttributeValues": {":t": True},
        }
        items: list[dict[str, Any]] = [{"Update": marked}]
        if amount > 0:
            budget = {
                "TableName": self.table.name,
                "Key": {"pk": f"budget#{day}"},
                "UpdateExpression": "ADD committed_micros :n",
                "ExpressionAttributeValues": {":n": -amount},
            }
            items.append({"Update": budget})
        return self._transact(items)

    def _transact(self, items: list[dict[str, Any]], tries: int = 5) -> bool:
        """One transaction; False when a condition of it failed. Every commitment and give-back
        of a day writes its budget item, so concurrent ones conflict: a conflict (or a throttle)
        says nothing about the conditions and is tried again, then raised, never read as one."""
        client = self.table.meta.client
        for n in range(tries):
            try:
                client.transact_write_items(TransactItems=items)
                return True
            except client.exceptions.TransactionCanceledException as exc:
                reasons = {r.get("Code") for r in exc.response.get("CancellationReasons", [])}
                if "ConditionalCheckFailed" in reasons:
                    return False
                if n == tries - 1:
                    raise
                time.sleep(0.05 * 2**n)
        raise AssertionError("unreachable")


class Leases:
    """Named leases (`lease#<name>` items): who holds one, until when."""

    table: Any
    get: Callable[[str], dict[str, Any] | None]  # the store's consistent read

    def lease(self, name: str, holder: str, until: float, now: float) -> bool:
        """Take lease <name> for `holder` until `until`, unless another holder's is still running."""
        try:
            self.table.put_item(
                Item={"pk": f"lease#{name}", "kind": "lease", "holder": holder, "until": dynamo(until)},
                ConditionExpression=Attr("pk").not_exists() | Attr("until").lt(dynamo(now)),
            )
        except self.table.meta.client.exceptions.ConditionalCheckFailedException:
            # A write the SDK sent again after it applied is refused by its own condition: the
            # lease is `holder`'s then, and taken.
            return (self.get(f"lease#{name}") or {}).get("holder") == holder
        return True

    def renew(self, name: str, holder: str, until: float) -> bool:
        """Extend lease <name> to `until`, only while `holder` still has it (a renewal the SDK
        sends again is applied again, harmlessly); False when another holder has taken it."""
        try:
            self.table.update_item(
                Key={"pk": f"lease#{name}"},
                UpdateExpression="SET #until = :until",
                ConditionExpression=Attr("holder").eq(holder),
                ExpressionAttributeNames={"#until": "until"},
                ExpressionAttributeValues={":until": dynamo(until)},
            )
        except self.table.meta.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def unlease(self, name: str, holder: str) -> None:
        """Give lease <name> back. A lease that expired may be someone else's by now: only the
        holder's own is removed. Tried again through a throttle: a lease left behind by work that
        is over keeps everyone out until it runs out."""

        def delete() -> None:
            with suppress(self.table.meta.client.exceptions.ConditionalCheckFailedException):
                self.table.delete_item(
                    Key={"pk": f"lease#{name}"}, ConditionExpression=Attr("holder").eq(holder)
                )

        insist(delete)


class Store(Budgets, Leases):
    def __init__(self, table_name: str):
        self.table = aws.table(table_name)

    # requests

    def add(self, item: dict[str, Any] | Item) -> bool:
        """Write a new item; False when its key is already taken (a duplicate delivery or id)."""
        if isinstance(item, Item):
            item = item.item()
        try:
            self.table.put_item(Item=dynamo(item), ConditionExpression=Attr("pk").not_exists())
        except self.table.meta.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def get(self, key: str) -> dict[str, Any] | None:
        found = self.table.get_item(Key={"pk": key}, ConsistentRead=True).get("Item")
        return plain(found) if found else None

    def batch(self, ref: str) -> BatchRecord | None:
        found = self.get(batch_key(ref))
        return BatchRecord.model_validate(found) if found else None

    def request(self, request_id: str) -> RequestItem | None:
        found = self.get(request_key(request_id))
        return RequestItem.model_validate(found) if found else None

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Items by key, 100 a call, retrying what DynamoDB leaves unprocessed."""
        out: dict[str, dict[str, Any]] = {}
        pending = list(dict.fromkeys(keys))
        name = self.table.name
        while pending:
            chunk, pending = pending[:100], pending[100:]
            request: dict[str, Any] = {name: {"Keys": [{"pk": k} for k in chunk], "ConsistentRead": True}}
            while request:
                answer = aws.dynamodb().batch_get_item(RequestItems=request)
                for item in answer["Responses"].get(name, []):
                    out[item["pk"]] = plain(item)
                request = answer.get("UnprocessedKeys") or {}
        return out

    def put_if(self, item: dict[str, Any], condition: Any) -> bool:
        """Replace an item only when `condition` holds on the one stored; False when it does not."""
        try:
            self.table.put_item(Item=dynamo(item), ConditionExpression=condition)
        except self.table.meta.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def put_many(self, items: Iterable[dict[str, Any]]) -> None:
        """Unconditional writes, 25 a call; only for items no one else may change meanwhile."""
        with self.table.batch_writer() as writer:
            for item in items:
                writer.put_item(Item=dynamo(item))

    def pages(
        self, partition: str, size: int = 1000, span: str | None = None, until: str | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """Items of one index partition, oldest first, a page at a time (eventually consistent).
        `span`: "plain" for requests without a deadline only, "by" for those with one only;
        `until`: sort keys up to this one."""
        cond: Any = Key("pending_tier").eq(partition)
        sort = Key("pending_since")
        if span == "by":
            cond &= sort.between(BY, until) if until else sort.begins_with(BY)
        elif span == "plain":
            cond &= sort.lt(BY) if until is None else sort.lte(until)
        elif until:
            cond &= sort.lte(until)
        args: dict[str, Any] = {
            "IndexName": INDEX,
            "KeyConditionExpression": cond,
            "ScanIndexForward": True,
            "Limit": size,
        }
        while True:
            page = self.table.query(**args)
            yield [plain(item) for item in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                return
            args["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def waiting(
        self, partition: str, limit: int | None = None, span: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Items of one index partition, oldest first."""
        seen = 0
        for page in self.pages(partition, min(limit, 1000) if limit else 1000, span=span):
            for item in page:
                yield item
                seen += 1
                if limit and seen >= limit:
                    return

    def recent(self, partition: str, since: str, limit: int) -> list[dict[str, Any]]:
        """The newest items of one index partition, down to sort key `since`."""
        page = self.table.query(
            IndexName=INDEX,
            KeyConditionExpression=Key("pending_tier").eq(partition) & Key("pending_since").gte(since),
            ScanIndexForward=False,
            Limit=limit,
        )
        return [plain(item) for item in page.get("Items", [])]

    def update_if(
        self,
        key: str,
        condition: Any,
        remove: tuple[str, ...] = (),
        add: dict[str, Any] | None = None,
        **fields: Any,
    ) -> bool:
        """`update`, only when `condition` holds; False when it does not."""
        try:
            self.update(key, remove=remove, add=add, condition=condition, **fields)
        except self.table.meta.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def committed(self, day: str) -> float:
        item = self.get(f"budget#{day}")
        return int(item.get("committed_micros", 0)) / MICROS if item else 0.0

    # tiers

    def note_tiers(self, names: Iterable[str]) -> None:
        """Add tier names to the ones requests were ever put in (a set: a write sent twice is harmless)."""
        names = set(names)
        if names:
            self.table.update_item(
                Key={"pk": TIERS},
                UpdateExpression="SET kind = :k ADD #names :n",
                ExpressionAttributeNames={"#names": "names"},
                ExpressionAttributeValues={":k": "tiers", ":n": names},
            )

    def known_tiers(self) -> set[str]:
        item = self.get(TIERS)
        return set(item.get("names", ())) if item else set()

    # batches

    def own(self, batch_id: str, ref: str, ttl: int) -> bool:
        """Record that API batch <batch_id> is batch <ref>'s; False when another record has it."""
        try:
            self.table.put_item(
                Item={"pk": f"batchid#{batch_id}", "kind": "batchid", "ref": ref, "ttl": ttl},
                ConditionExpression=Attr("pk").not_exists() | Attr("ref").eq(ref),
            )
        except self.table.meta.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def disown(self, batch_id: str, ref: str) -> None:
        """Give up API batch <batch_id> (it was not <ref>'s after all), so its own record may take it."""
        with suppress(self.table.meta.client.exceptions.ConditionalCheckFailedException):
            self.table.delete_item(Key={"pk": f"batchid#{batch_id}"}, ConditionExpression=Attr("ref").eq(ref))

    def owners(self, batch_ids: Iterable[str]) -> dict[str, str]:
        """The record ref that owns each of these API batches, for those the stack has recorded."""
        found = self.get_many(f"batchid#{b}" for b in batch_ids)
        return {k.removeprefix("batchid#"): v["ref"] for k, v in found.items()}

    def hold(self, tier: str, now: float, base: float, cap: float) -> int:
        """Hold a tier for base * 2^level seconds (at most cap), one level more each time."""
        answer = self.table.update_item(
            Key={"pk": f"hold#{tier}"},
            UpdateExpression="SET kind = :k, since = if_not_exists(since, :now) ADD #level :one",
            ExpressionAttributeNames={"#level": "level"},
            ExpressionAttributeValues={":k": "hold", ":now": dynamo(now), ":one": 1},
            ReturnValues="ALL_NEW",
        )
        level = int(answer["Attributes"]["level"])
        until = now + min(cap, base * 2 ** (level - 1))
        self.table.update_item(
            Key={"pk": f"hold#{tier}"},
            UpdateExpression="SET #until = :until",
            ExpressionAttributeNames={"#until": "until"},
            ExpressionAttributeValues={":until": dynamo(until)},
        )
        return level

    def held_until(self, tier: str) -> float | None:
        item = self.get(f"hold#{tier}")
        return float(item["until"]) if item and "until" in item else None

    def unhold(self, tier: str) -> None:
        self.table.delete_item(Key={"pk": f"hold#{tier}"})

    def update(
        self,
        key: str,
        remove: tuple[str, ...] = (),
        add: dict[str, Any] | None = None,
        condition: Any = None,
        **fields: Any,
    ) -> None:
        """Set, remove and add to attributes of an existing item in one write; a batch record's
        only those it declares."""
        if key.startswith(batch_key("")):
            BatchRecord.check([*fields, *remove, *(add or ())])
        names = {f"#{i}": k for i, k in enumerate(fields)}
        values = {f":{i}": dynamo(v) for i, v in enumerate(fields.values())}
        clauses = ["SET " + ", ".join(f"#{i} = :{i}" for i in range(len(fields)))] if fields else []
        if remove:
            names.update({f"#r{j}": attr for j, attr in enumerate(remove)})
            clauses.append("REMOVE " + ", ".join(f"#r{j}" for j in range(len(remove))))
        if add:
            names.update({f"#a{j}": attr for j, attr in enumerate(add)})
            values.update({f":a{j}": dynamo(v) for j, v in enumerate(add.values())})
            clauses.append("ADD " + ", ".join(f"#a{j} :a{j}" for j in range(len(add))))
        exists = Attr("pk").exists()
        self.table.update_item(
            Key={"pk": key},
            UpdateExpression=" ".join(clauses),
            ConditionExpression=exists if condition is None else exists & condition,
            ExpressionAttributeNames=names,
            **({"ExpressionAttributeValues": values} if values else {}),
        )

    def update_batch(
        self, ref: str, remove: tuple[str, ...] = (), add: dict[str, Any] | None = None, **fields: Any
    ) -> None:
        """`update` of batch record <ref>."""
        self.update(batch_key(ref), remove=remove, add=add, **fields)

    def count(self, partition: str, up_to: int) -> int:
        """How many items wait in one index partition, counting no further than `up_to`."""
        total = 0
        args: dict[str, Any] = {
            "IndexName": INDEX,
            "KeyConditionExpression": Key("pending_tier").eq(partition),
            "Select": "COUNT",
        }
        while total < up_to:
            page = self.table.query(**args)
            total += page["Count"]
            if "LastEvaluatedKey" not in page:
                break
            args["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return total

    def live_batches(self) -> Iterator[BatchRecord]:
        """The records on the work list. One this version cannot read (a state or shape another
        version wrote) is reported and passed over: it stops no other record's recovery nor any
        tier's flush."""
        for item in self.waiting(LIVE):
            try:
                yield BatchRecord.model_validate(item)
            except ValidationError as exc:
                logger.error(
                    "a live record this version cannot read; left as it is",
                    extra={"pk": item.get("pk"), "state": item.get("status"), "error": str(exc)[:500]},
                )
                metrics.add_metric(name="UnreadableRecords", unit=MetricUnit.Count, value=1)

    def scan(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        """Every item (of one kind): for operators' reports, never on the request path."""
        args: dict[str, Any] = {"FilterExpression": Attr("kind").eq(kind)} if kind else {}
        while True:
            page = self.table.scan(**args)
            for item in page["Items"]:
                yield plain(item)
            if "LastEvaluatedKey" not in page:
                return
            args["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def dynamo(value: Any) -> Any:
    """Floats are refused by boto3's DynamoDB serializer; Decimal keeps them exact."""
    if isinstance(value, float):
        text = str(value)
        # Written out, never in exponent form (tiny amounts of USD): moto's ADD parses no exponent.
        return Decimal(f"{value:.12f}" if "e" in text else text)
    if isinstance(value, dict):
        return {k: dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [dynamo(v) for v in value]
    return value


class LeaseLost(Exception):
    """A run's lease ran out and another holder took it: the run stops before its next write."""


@dataclass
class Lease:
    """A short lease a run keeps by renewing it as it goes (a heartbeat), so a run that dies keeps
    everyone out for `seconds` at most, not for as long as its invocation could have lasted.

    Another invocation's clock may run `skew` ahead of ours, and take the lease that much before
    `until` by our clock: the holder counts on it only until `until - skew`. `keep` is called
    before each write that needs the lease, and renews it unless more than `ahead` seconds (the
    longest such a write takes) of that are left; a renewal refused (another run has it) raises
    `LeaseLost`, so a run that lost its lease never makes such a write again."""

    store: Store
    name: str
    holder: str
    seconds: float
    skew: float
    ahead: float
    until: float = 0.0

    def take(self, now: float) -> bool:
        taken = self.store.lease(self.name, self.holder, now + self.seconds, now)
        if taken:
            self.until = now + self.seconds
        return taken

    def keep(self) -> None:
        now = clock.now()
        if now + self.ahead < self.until - self.skew:
            return
        until = now + self.seconds
        if not insist(lambda: self.store.renew(self.name, self.holder, until)):
            raise LeaseLost(f"lease {self.name} was taken by another holder")
        self.until = until

    def give_back(self) -> None:
        self.store.unlease(self.name, self.holder)
