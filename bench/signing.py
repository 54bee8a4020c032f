"""Cost of the protocol's signing and verification: the fast path, the library path, bare Ed25519.

    python bench/signing.py [--n 2000] [--rounds 5]

Times, in one process, signing and verifying the worked example's request and receipt
(``tests/vectors/verification-request.json``, a real body of the usual size) three ways:

- **bare**: Ed25519 alone (``cryptography``) over the same signature base, sign and verify apart
  and together (the last was this bench's only baseline before the fast path);
- **fast**: ``service.signing.http``, what the node runs (the profile built directly);
- **library**: ``service.signing.reference``, the implementation on ``http-message-signatures``
  that the fast path replaced (kept for the tests and this bench).

Each operation runs ``--n`` times per round, the operations taking turns, for ``--rounds`` rounds;
the best round of each is printed, as operations per second of this process's CPU time (so per
core, and less disturbed by whatever else a shared machine is doing than wall time would be), as a
share of the bare Ed25519 operation it contains (sign or verify: the ceiling), and for the fast
path as a multiple of the library. The load average before and after is printed too: on a loaded
machine the absolute figures still move (caches, frequency), the ratios much less.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.signing import http as fast
from service.signing import reference

# The protocol's worked example (docs/protocol.md): a real request body and receipt of the usual size.
VECTOR = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "verification-request.json"
PATH = "/peer/v1/verification-requests"


class _Recording:
    """Signs as the key does and keeps the last message: the signature base the code built."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key, self.signed = key, b""

    def sign(self, data: bytes) -> bytes:
        self.signed = bytes(data)
        return self.key.sign(data)


def rate(fn: Callable[[], Any], n: int) -> float:
    """Operations per second of this process's CPU time (one core; other processes' work not counted)."""
    start = time.process_time()
    for _ in range(n):
        fn()
    return n / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    vector = json.loads(VECTOR.read_text(encoding="utf-8"))
    body = vector["request"]["body"].encode("utf-8")
    receipt = vector["response"]["body"].encode("utf-8")
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    now = datetime.now(UTC)  # real clock

    def signing(impl: Any, k: Any = key) -> dict[str, str]:
        keyid = "410105/k1"
        headers = impl.sign_request(method="POST", path=PATH, body=body, key=k, keyid=keyid, created=now)
        return dict(headers)

    def answering(impl: Any, k: Any = key) -> dict[str, str]:
        headers = impl.sign_response(
            status=202, body=receipt, key=k, keyid="411627/k1", created=now, content_type=fast.JSON
        )
        return dict(headers)

    request_headers, response_headers = signing(fast), answering(fast)
    recording = _Recording(key)
    signing(fast, recording)
    base = recording.signed  # the request's signature base (about 350 bytes)
    signature = key.sign(base)

    def verifying(impl: Any) -> Callable[[], Any]:
        return lambda: impl.verify_request(
            method="POST",
            path=PATH,
            headers=request_headers.items(),
            body=body,
            resolve_key=lambda _k: public,
            now=now,
        )

    def checking(impl: Any) -> Callable[[], Any]:
        return lambda: impl.verify_response(
            status=202,
            headers=response_headers.items(),
            body=receipt,
            resolve_key=lambda _k: public,
            expected_node="411627",
            now=now,
        )

    ops: dict[str, tuple[str, Callable[[], Any]]] = {
        "bare ed25519 sign": ("sign", lambda: key.sign(base)),
        "bare ed25519 verify": ("verify", lambda: public.verify(signature, base)),
        "bare ed25519 sign+verify": ("both", lambda: public.verify(key.sign(base), base)),
    }
    for name, impl in (("fast", fast), ("library", reference)):
        ops[f"{name} sign_request"] = ("sign", lambda impl=impl: signing(impl))
        ops[f"{name} verify_request"] = ("verify", verifying(impl))
        ops[f"{name} sign_response"] = ("sign", lambda impl=impl: answering(impl))
        ops[f"{name} verify_response"] = ("verify", checking(impl))
    for _, fn in ops.values():
        fn()  # warm up (and fail early)

    load_before = os.getloadavg()
    best = dict.fromkeys(ops, 0.0)
    for _ in range(args.rounds):
        for name, (_, fn) in ops.items():
            best[name] = max(best[name], rate(fn, args.n))
    load_after = os.getloadavg()

    bare = {"sign": best["bare ed25519 sign"], "verify": best["bare ed25519 verify"]}
    bare["both"] = best["bare ed25519 sign+verify"]
    print(
        f"{os.cpu_count()} cores, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        f"best of {args.rounds} rounds of {args.n}"
    )
    print(f"{'operation':<28}{'ops/s':>10}{'vs bare':>10}{'vs library':>12}")
    for name, (kind, _) in ops.items():
        value = best[name]
        versus = ""
        if name.startswith("fast "):
            versus = f"{value / best[name.replace('fast ', 'library ')]:>11.2f}x"
        print(f"{name:<28}{value:>10.0f}{value / bare[kind]:>9.2f}x{versus}")


if __name__ == "__main__":
    main()
