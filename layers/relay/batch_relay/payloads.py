"""The payload bucket: the only module that touches S3.

Layout: `bodies/` the request lines the buffer accepted (one object per buffer invocation, a
request's item points at its bytes), `claims/` the ids each batch claimed, page by page, written
before the claim, `input/` the JSONL each batch was created from, `results/` the raw results of each
batch, `messages/` completions too large for SNS, `outbox/` completions written before they are
published, with a marker for each PublishBatch call that went out (see `results`), `deadlines/`
each batch's deadline requests in the order they are taken out for realtime, `answers/` realtime
answers kept between the call and their settling.
"""

from __future__ import annotations

import json
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from . import aws
from .models import S3Pointer

# S3 multipart parts must be at least 5 MiB; larger parts mean fewer calls for a 256 MB batch.
PART_BYTES = 16 * 1024 * 1024
# Bodies the submitter keeps in memory while it claims; a shared body object is at most 8 MB.
CACHE_BYTES = 64 * 1024 * 1024
# A line this long sits alone in its object and is read by range, never cached.
SHARED_LINE_BYTES = 256 * 1024


def request_text(custom_id: str, params: dict[str, Any]) -> str:
    """One request of a batch's JSONL, as the buffer stores it and the create call sends it."""
    return json.dumps({"custom_id": custom_id, "params": params}, separators=(",", ":"), ensure_ascii=False)


def request_line(custom_id: str, params: dict[str, Any]) -> bytes:
    return request_text(custom_id, params).encode()


class Payloads:
    def __init__(self, bucket: str):
        self.bucket = bucket
        self.s3 = aws.client("s3")

    def put_json(self, key: str, value: Any) -> S3Pointer:
        body = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")
        return S3Pointer(bucket=self.bucket, key=key)

    def put_lines(self, key: str, lines: list[bytes]) -> None:
        self.s3.put_object(
            Bucket=self.bucket, Key=key, Body=b"".join(lines), ContentType="application/x-ndjson"
        )

    def read(self, bucket: str, key: str, limit: int | None = None) -> bytes:
        """An object's bytes; ValueError past `limit`, checked before anything is downloaded."""
        obj = self.s3.get_object(Bucket=bucket, Key=key)
        if limit is not None and obj["ContentLength"] > limit:
            obj["Body"].close()
            raise ValueError(f"object is {obj['ContentLength']} bytes; the limit is {limit}")
        return obj["Body"].read()

    # the outbox

    def outbox(self, ref: str, box: str, groups: list[list[dict[str, Any]]]) -> str:
        """Write a chunk's completions, cut into their publish calls; returns the box's key."""
        key = f"outbox/{ref}/{box}.{len(groups)}.json"
        self.put_json(key, groups)
        return key

    def sent(self, key: str, group: int, ids: list[str], whole: bool) -> None:
        """Mark publish call <group> of a box as gone out (or, not `whole`, these ids of it)."""
        name = f"{key}.sent.{group}" if whole else f"{key}.part.{group}.{uuid.uuid4().hex[:8]}"
        self.s3.put_object(Bucket=self.bucket, Key=name, Body=json.dumps(ids).encode())

    def unsent(self, ref: str) -> Iterator[tuple[str, int, list[dict[str, Any]]]]:
        """(box key, call number, entries not yet published) for every call of batch <ref>'s
        boxes that has no marker: what a crash between writing and publishing left behind."""
        boxes: dict[str, int] = {}
        done: set[tuple[str, int]] = set()
        parts: dict[tuple[str, int], list[str]] = {}
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"outbox/{ref}/")
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"]
                if name.endswith(".json"):
                    boxes[name] = int(name.rsplit(".", 2)[1])
                elif ".json.sent." in name:
                    box, _, n = name.rpartition(".sent.")
                    done.add((box, int(n)))
                elif ".json.part." in name:
                    box, _, rest = name.rpartition(".part.")
                    parts.setdefault((box, int(rest.split(".")[0])), []).append(name)
        for key, count in boxes.items():
            missing = [g for g in range(count) if (key, g) not in done]
            if not missing:
                continue
            groups = json.loads(self.read(self.bucket, key))
            for g in missing:
                gone = {
                    i for name in parts.get((key, g), []) for i in json.loads(self.read(self.bucket, name))
                }
                yield key, g, [e for e in groups[g] if e["id"] not in gone]

    def read_into(self, bucket: str, key: str, limit: int) -> bytearray:
        """An object's bytes in a buffer of its exact size, which the caller may clear once read
        (a 32 MB body is then held once, not twice); ValueError past `limit`, checked first."""
        obj = self.s3.get_object(Bucket=bucket, Key=key)
        size = int(obj["ContentLength"])
        body = obj["Body"]
        try:
            if size > limit:
                raise ValueError(f"object is {size} bytes; the limit is {limit}")
            data = bytearray(size)
            view = memoryview(data)
            got = 0
            while got < size:
                chunk = body.read(min(size - got, 1 << 20))
                if not chunk:
                    raise OSError(f"s3://{bucket}/{key} ended after {got} of {size} bytes")
                view[got : got + len(chunk)] = chunk
                got += len(chunk)
            view.release()
            return data
        finally:
            body.close()

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        span = f"bytes={offset}-{offset + length - 1}"
        return self.s3.get_object(Bucket=self.bucket, Key=key, Range=span)["Body"].read()

    def journal(self, ref: str, page: int, ids: Iterable[str]) -> None:
        """Record the ids batch <ref> is about to claim, so a crashed claim can be undone."""
        self.put_lines(f"claims/{ref}/{page:06d}.txt", [f"{rid}\n".encode() for rid in ids])

    def journaled(self, ref: str) -> Iterator[str]:
        """Every id batch <ref> may have claimed, in claim order."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"claims/{ref}/")
        for page in pages:
            for obj in page.get("Contents", []):
                yield from self.read(self.bucket, obj["Key"]).decode().split()

    def exists(self, key: str) -> bool:
        """Whether an object is there, asked by listing (a role without list rights on the whole
        bucket would read a missing object as refused, not missing)."""
        found = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1).get("Contents", [])
        return any(obj["Key"] == key for obj in found)

    def read_json(self, key: str) -> Any:
        return json.loads(self.read(self.bucket, key))

    def size(self, key: str) -> int:
        return int(self.s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"])

    def chunks(self, key: str, size: int = 1024 * 1024) -> Iterator[bytes]:
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(chunk_size=size)
        finally:
            body.close()

    def writer(self, key: str) -> JsonlWriter:
        return JsonlWriter(self.s3, self.bucket, key)


class Bodies:
    """Request lines by pointer, for the submitter: each shared body object is read once and kept
    while it is likely to be needed again (its requests arrived together, so they are claimed
    together), up to CACHE_BYTES."""

    def __init__(self, payloads: Payloads, budget: int = CACHE_BYTES):
        self.payloads, self.budget = payloads, budget
        self.held: OrderedDict[str, bytes] = OrderedDict()
        self.size = 0
        self.reads = 0

    def line(self, key: str, offset: int, length: int) -> bytes:
        if length > SHARED_LINE_BYTES:
            self.reads += 1
            return self.payloads.read_range(key, offset, length)
        data = self.held.get(key)
        if data is None:
            self.reads += 1
            data = self.payloads.read(self.payloads.bucket, key)
            self.held[key] = data
            self.size += len(data)
            while self.size > self.budget and len(self.held) > 1:
                self.size -= len(self.held.popitem(last=False)[1])
        else:
            self.held.move_to_end(key)
        return data[offset : offset + length]


class RequestsBody:
    """A batch's JSONL object as the body of a create call, `{"requests":[line,line,...]}`,
    streamed from S3 a chunk at a time. Each iteration reads the object afresh, so a retried
    request sends the whole body again."""

    HEAD, TAIL = b'{"requests":[', b"]}"

    def __init__(self, payloads: Payloads, key: str, size: int):
        self.payloads, self.key, self.size = payloads, key, size

    def __len__(self) -> int:
        # Every line ends in a newline: each becomes a comma, except the last, which is dropped.
        return len(self.HEAD) + self.size - 1 + len(self.TAIL)

    def __iter__(self) -> Iterator[bytes]:
        yield self.HEAD
        held = b""
        for chunk in self.payloads.chunks(self.key):
            if held:
                yield held
            # JSON lines never hold a raw newline, so every newline is a line end.
            held = chunk.replace(b"\n", b",")
        yield held[:-1]
        yield self.TAIL


class JsonlWriter:
    """Streams lines into one S3 object: a multipart upload once the data outgrows one part."""

    def __init__(self, s3: Any, bucket: str, key: str):
        self.s3, self.bucket, self.key = s3, bucket, key
        self.buffer = bytearray()
        self.parts: list[dict[str, Any]] = []
        self.upload_id: str | None = None
        self.bytes = 0
        self.count = 0

    def write(self, line: bytes) -> None:
        self.buffer += line
        self.buffer += b"\n"
        self.bytes += len(line) + 1
        self.count += 1
        if len(self.buffer) >= PART_BYTES:
            self._flush_part()

    def _flush_part(self) -> None:
        if self.upload_id is None:
            self.upload_id = self.s3.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType="application/x-ndjson"
            )["UploadId"]
        number = len(self.parts) + 1
        answer = self.s3.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=bytes(self.buffer),
        )
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        self.buffer.clear()

    def close(self) -> None:
        if self.upload_id is None:
            self.s3.put_object(
                Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer), ContentType="application/x-ndjson"
            )
        else:
            if self.buffer:
                self._flush_part()
            self.s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )
        self.buffer.clear()

    def abort(self) -> None:
        if self.upload_id is not None:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
