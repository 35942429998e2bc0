"""The payload bucket: the only module that touches S3.

Layout: `bodies/` request bodies too large for SQS or DynamoDB, `input/` the JSONL each batch was
created from, `results/` the raw results of each batch, `messages/` completions too large for SNS.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from . import aws
from .models import S3Pointer

# S3 multipart parts must be at least 5 MiB; larger parts mean fewer calls for a 256 MB batch.
PART_BYTES = 16 * 1024 * 1024


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
