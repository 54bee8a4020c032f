"""Python face of the independent RFC 9421 implementation in ``rfc9421.mjs``.

The signing and verifying is done by node with the npm package ``http-message-signatures``
(dhensby, pinned in ``package.json``), which shares no code with the project's own signing code.
Each call runs ``node rfc9421.mjs`` once, with one JSON command on stdin and one JSON answer on
stdout.

Install the node side with ``(cd tests/interop && npm ci --no-audit --no-fund)``; until then
:func:`available` is false and the tests that need it skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "rfc9421.mjs"
_REQUIRED_PACKAGES = ("http-message-signatures", "structured-headers")
_TIMEOUT_S = 60


class IndependentError(RuntimeError):
    """The script refused the command (bad input) or could not run."""


@dataclass(frozen=True)
class Signed:
    """A signed message's headers (all of them) and the RFC 9421 signature base that was signed."""

    headers: dict[str, str]
    signature_base: str


@dataclass(frozen=True)
class Verdict:
    """The outcome of a verification: signature valid AND Content-Digest matching the body."""

    ok: bool
    error: str | None = None


@dataclass(frozen=True)
class BoundRequest:
    """The signed request a response answers (its method, path and headers as sent)."""

    method: str
    url: str
    headers: Mapping[str, str]

    def command(self) -> dict[str, Any]:
        return {"method": self.method, "url": self.url, "headers": dict(self.headers)}


def _node() -> str | None:
    return shutil.which("node")


def available() -> bool:
    """True when node is on PATH and the npm dependencies are installed next to the script."""
    return _node() is not None and all(
        (HERE / "node_modules" / name / "package.json").is_file() for name in _REQUIRED_PACKAGES
    )


def _body_text(body: str | bytes) -> str:
    return body.decode("utf-8") if isinstance(body, bytes) else body


def _run(command: Mapping[str, Any]) -> dict[str, Any]:
    node = _node()
    if node is None:
        raise IndependentError("node is not on PATH")
    proc = subprocess.run(
        [node, str(SCRIPT)],
        input=json.dumps(command),
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=HERE,
        timeout=_TIMEOUT_S,
        check=False,
    )
    try:
        answer = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise IndependentError(
            f"rfc9421.mjs exited {proc.returncode} without a JSON answer; stderr: {proc.stderr.strip()}"
        ) from exc
    if proc.returncode != 0 or not isinstance(answer, dict) or ("error" in answer and "ok" not in answer):
        raise IndependentError(f"rfc9421.mjs {command.get('op')}: {answer}")
    return answer


def _signed(answer: dict[str, Any]) -> Signed:
    return Signed(headers=dict(answer["headers"]), signature_base=str(answer["signature_base"]))


def _verdict(answer: dict[str, Any]) -> Verdict:
    return Verdict(ok=answer["ok"] is True, error=answer.get("error"))


def sign_request(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: str | bytes,
    private_seed_hex: str,
    keyid: str,
    created: int,
    expires: int,
    nonce: str,
) -> Signed:
    """Sign a peer request: adds Content-Digest, Signature-Input and Signature (label ``yp``).

    ``url`` may be absolute or just the path; only ``@path`` is covered.
    """
    return _signed(
        _run(
            {
                "op": "sign_request",
                "method": method,
                "url": url,
                "headers": dict(headers),
                "body": _body_text(body),
                "private_seed_hex": private_seed_hex,
                "keyid": keyid,
                "created": created,
                "expires": expires,
                "nonce": nonce,
            }
        )
    )


def sign_response(
    *,
    status: int,
    headers: Mapping[str, str],
    body: str | bytes,
    private_seed_hex: str,
    keyid: str,
    created: int,
    request: BoundRequest | None = None,
) -> Signed:
    """Sign a peer response: adds Content-Digest, Signature-Input and Signature (label ``yp``);
    bound to ``request`` (RFC 9421 ``req``) when given."""
    command: dict[str, Any] = {
        "op": "sign_response",
        "status": status,
        "headers": dict(headers),
        "body": _body_text(body),
        "private_seed_hex": private_seed_hex,
        "keyid": keyid,
        "created": created,
    }
    if request is not None:
        command["request"] = request.command()
    return _signed(_run(command))


def verify_request(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: str | bytes,
    public_key_b64url: str,
    now: int,
) -> Verdict:
    """Verify a peer request's ``yp`` signature and its Content-Digest, with the clock at ``now``."""
    return _verdict(
        _run(
            {
                "op": "verify_request",
                "method": method,
                "url": url,
                "headers": dict(headers),
                "body": _body_text(body),
                "public_key_b64url": public_key_b64url,
                "now": now,
            }
        )
    )


def verify_response(
    *,
    status: int,
    headers: Mapping[str, str],
    body: str | bytes,
    public_key_b64url: str,
    now: int,
    request: BoundRequest | None = None,
) -> Verdict:
    """Verify a peer response's ``yp`` signature and its Content-Digest, with the clock at ``now``;
    with ``request``, it must be bound to that request (RFC 9421 ``req``)."""
    command: dict[str, Any] = {
        "op": "verify_response",
        "status": status,
        "headers": dict(headers),
        "body": _body_text(body),
        "public_key_b64url": public_key_b64url,
        "now": now,
    }
    if request is not None:
        command["request"] = request.command()
    return _verdict(_run(command))
