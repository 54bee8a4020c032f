"""Cost of the protocol's signing and verification against bare Ed25519, in one process.

    python bench/signing.py [--n 2000]

Prints operations per second and the ratio to the baseline (bare Ed25519 sign + verify of the
same signature base), so the figure means the same on any machine.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.signing.http import sign_request, verify_request

# The protocol's worked example (docs/protocol.md): a real request body of the usual size.
VECTOR = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "verification-request.json"


def rate(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm up
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    n = parser.parse_args().n
    body = json.loads(VECTOR.read_text(encoding="utf-8"))["request"]["body"].encode("utf-8")
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    now = datetime.now(UTC)  # real clock
    headers = sign_request(
        method="POST",
        path="/peer/v1/verification-requests",
        body=body,
        key=key,
        keyid="410105/k1",
        created=now,
    )
    base = b"x" * 400  # about the size of a signature base

    def bare() -> None:
        public.verify(key.sign(base), base)

    def protocol_sign() -> None:
        sign_request(
            method="POST",
            path="/peer/v1/verification-requests",
            body=body,
            key=key,
            keyid="410105/k1",
            created=now,
        )

    def protocol_verify() -> None:
        verify_request(
            method="POST",
            path="/peer/v1/verification-requests",
            headers=headers.items(),
            body=body,
            resolve_key=lambda _k: public,
            now=now,
        )

    baseline = rate(bare, n)
    results = {
        "bare ed25519 sign+verify": baseline,
        "sign_request": rate(protocol_sign, n),
        "verify_request": rate(protocol_verify, n),
    }
    print(f"{'operation':<28}{'ops/s':>10}{'vs baseline':>14}")
    for name, value in results.items():
        print(f"{name:<28}{value:>10.0f}{value / baseline:>13.2f}x")


if __name__ == "__main__":
    main()
