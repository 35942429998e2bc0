"""Request bodies as they arrive: bytes or text, inline or behind an S3 pointer, turned into JSON
values that every later step can carry, or refused with a reason.

What passes `parse` and then `check` is safe for the rest of the relay: it is JSON, at most
MAX_DEPTH levels deep (the validator and the serialiser recurse), its numbers are finite and its
integers within ±(2^53-1) (what any JSON peer reads exactly), its strings encode as UTF-8 (no lone
surrogates), and it holds at most MAX_VALUES values, so its size in memory stays a small multiple
of its size in bytes.
Every failure here is the caller's, and becomes a RejectedRequest.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from .errors import RejectedRequest, excerpt

# The SQS Extended Client's pointers: the current one, and the legacy one that the Java library
# 1.x, `sqs-extended-client` and `amazon-sqs-extended-client` (use_legacy_attribute) still write.
POINTER_CLASSES = frozenset(
    {"software.amazon.payloadoffloading.PayloadS3Pointer", "com.amazon.sqs.javamessaging.MessageS3Pointer"}
)
MAX_DEPTH = 100
MAX_INT = 2**53 - 1
# Values in one body: a 32 MB body of `{},` repeated would otherwise take over 600 MB in memory.
MAX_VALUES = 250_000
# Bodies shorter than this cannot hold enough values to matter, so they are not counted.
_COUNT_FROM = 1024 * 1024
_SURROGATE = re.compile("[\ud800-\udfff]")
# A whole JSON string (possessive: never backtracks), or a comma or opening bracket outside one.
_TOKENS = re.compile(rb'"(?:[^"\\]++|(?:\\.)++)*+"|[,\[{]', re.DOTALL)
_BOM = "\ufeff"
MAX_KEY_BYTES = 1024  # S3's limit on an object key


def parse(data: bytearray | bytes | str, where: str = "body") -> Any:
    """Parse one body, which may start with a UTF-8 byte-order mark. `check` what it returns: it
    is parsed first so that a rejection can still be answered under the caller's id. A bytearray
    is cleared once decoded, so a large body is not held twice while it is parsed."""
    if isinstance(data, bytes | bytearray):
        if len(data) > _COUNT_FROM and count_values(data) > MAX_VALUES:
            raise RejectedRequest(f"{where} holds over {MAX_VALUES:,} JSON values")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise RejectedRequest(f"{where} is not JSON: not UTF-8 (byte {exc.start})") from None
        finally:
            if isinstance(data, bytearray):
                data.clear()
    else:
        text = data[1:] if data.startswith(_BOM) else data
    try:
        return json.loads(text)
    except RecursionError:
        raise RejectedRequest(f"{where} is not JSON this relay can read: nested too deep") from None
    except json.JSONDecodeError as exc:
        at = f"line {exc.lineno} column {exc.colno}"
        raise RejectedRequest(f"{where} is not JSON: {exc.msg} at {at}") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise RejectedRequest(f"{where} is not JSON this relay can read: {excerpt(str(exc), 80)}") from None


def count_values(data: bytes | bytearray) -> int:
    """An upper bound of the values in a JSON text, counted until it passes MAX_VALUES: the commas
    and opening brackets outside strings (a prompt's own commas do not count). Strings are matched
    by the regex engine, atomically, so no body (one long string of escaped quotes, say) costs more
    than a pass in C plus a Python step per value counted."""
    count = 0
    for found in _TOKENS.finditer(data):
        if data[found.start()] != 0x22:
            count += 1
            if count > MAX_VALUES:
                break
    return count


def check(value: Any, where: str = "body") -> None:
    """Walk a parsed body without recursion; refuse what the relay cannot carry safely."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RejectedRequest(f"{where}{_path(value, node)} is nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, dict):
            for key, item in node.items():
                if not key.isascii() and _SURROGATE.search(key):
                    raise RejectedRequest(f"{where}{_path(value, node)}: a key holds a lone surrogate")
                if isinstance(item, dict | list):
                    stack.append((item, depth + 1))
                else:
                    _leaf(value, node, item, where)
        elif isinstance(node, list):
            for item in node:
                if isinstance(item, dict | list):
                    stack.append((item, depth + 1))
                else:
                    _leaf(value, node, item, where)
        else:
            _leaf(value, None, node, where)


def _leaf(root: Any, parent: Any, item: Any, where: str) -> None:
    if isinstance(item, str):
        if not item.isascii() and _SURROGATE.search(item):
            raise RejectedRequest(f"{where}{_path(root, parent)}: a string holds a lone surrogate")
    elif isinstance(item, bool) or item is None:
        return
    elif isinstance(item, int):
        if not -MAX_INT <= item <= MAX_INT:
            number = excerpt(str(item), 24)
            raise RejectedRequest(f"{where}{_path(root, parent)}: the number {number} is too large")
    elif isinstance(item, float) and not math.isfinite(item):
        raise RejectedRequest(f"{where}{_path(root, parent)}: a number is not finite (NaN or Infinity)")


def _path(root: Any, target: Any) -> str:
    """Where `target` sits in `root`, e.g. ` at params.tools.0`: found again only when needed."""
    if target is None or target is root:
        return ""
    found: list[str] = []

    def walk(node: Any, trail: list[str], depth: int) -> bool:
        if node is target:
            found.extend(trail)
            return True
        if depth > MAX_DEPTH + 1:
            return False
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in items:
            step = excerpt(str(key), 24, quote=False)
            if isinstance(child, dict | list) and walk(child, [*trail, step], depth + 1):
                return True
        return False

    walk(root, [], 0)
    return " at " + ".".join(found) if found else ""


def is_pointer(raw: Any) -> bool:
    """Whether a body is meant as an SQS Extended Client pointer: an array naming a pointer class."""
    return isinstance(raw, list) and bool(raw) and isinstance(raw[0], str) and raw[0] in POINTER_CLASSES


def pointer(raw: list[Any]) -> tuple[str, str]:
    """The (bucket, key) a pointer names; a malformed pointer is refused."""
    if len(raw) != 2 or not isinstance(raw[1], dict):
        raise RejectedRequest("malformed S3 pointer: expected [class, {s3BucketName, s3Key}]")
    bucket, key = raw[1].get("s3BucketName"), raw[1].get("s3Key")
    if not (isinstance(bucket, str) and isinstance(key, str)):
        raise RejectedRequest("S3 pointer lacks s3BucketName or s3Key (strings)")
    if not key or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise RejectedRequest(f"S3 pointer's s3Key must be 1 to {MAX_KEY_BYTES} bytes")
    return bucket, key


def digest(params: Any) -> str | None:
    """A digest of request params that does not depend on the order of their keys; None for
    params that are not an object. Values are fed to the hash as they are walked (a long string
    a slice at a time), so no second copy of a large body is made."""
    if not isinstance(params, dict):
        return None
    sent = {k: v for k, v in params.items() if v is not None and k != "stream"}
    h = hashlib.sha256()
    stack: list[Any] = [sent]
    steps = 0
    while stack:
        steps += 1
        if steps > 4 * MAX_VALUES or len(stack) > 4 * MAX_VALUES:
            return None
        node = stack.pop()
        if isinstance(node, _Key):
            h.update(b"k")
            _text(h, node.name)
        elif isinstance(node, dict):
            h.update(b"{%d:" % len(node))
            for key in sorted(node, reverse=True):  # popped in sorted order
                stack += [node[key], _Key(key)]
        elif isinstance(node, list):
            h.update(b"[%d:" % len(node))
            stack += reversed(node)
        elif isinstance(node, str):
            h.update(b"s")
            _text(h, node)
        else:
            h.update(b"v" + repr(node).encode() + b";")
    return h.hexdigest()[:32]


class _Key:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


def _text(h: Any, value: str) -> None:
    h.update(b"%d:" % len(value))
    for start in range(0, len(value), 1 << 20):
        h.update(value[start : start + (1 << 20)].encode("utf-8", "surrogatepass"))
