"""One domain error base class; one handler renders RFC 9457 problem+json."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

PROBLEM_JSON = "application/problem+json"


class ProblemField(BaseModel):
    """One reason a message or request did not validate: the field and why, never the value."""

    model_config = ConfigDict(extra="forbid")

    field: str
    reason: str


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error answer, peer and staff API alike."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="https://yipanqi.org/problems/<code>")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    code: str = Field(description="machine-readable reason (docs/protocol.md)")
    errors: list[ProblemField] | None = Field(
        default=None, description="what did not validate (invalid_message, validation_failed)"
    )


STAFF_ERROR_CODES = {
    401: "not_authenticated",
    403: "forbidden (role)",
    404: "not_found",
    409: "invalid_state; peer_refused (the origin refused a look-up, signed; its code in peer_code)",
    413: "payload_too_large",
    422: "validation_failed",
    429: "rate_limited (too many failed sign-ins from this address or for this account); peer_rate_limited"
    " (the other county's node asks this one to slow down); see Retry-After",
    502: "peer_unavailable (the other county's node gave no valid signed answer)",
    503: "busy (the node is at capacity; see Retry-After)",
}


def staff_errors(*statuses: int, codes: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """The staff API's error answers: 401, 403, 429 and 503 always, then ``statuses`` (``codes`` renames)."""
    descriptions = {**STAFF_ERROR_CODES, **(codes or {})}
    return problem_responses({s: descriptions[s] for s in sorted({401, 403, 429, 503, *statuses})})


def problem_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error answers, each a problem+json document."""
    schema = {"$ref": "#/components/schemas/Problem"}
    return {
        status: {"description": text, "content": {PROBLEM_JSON: {"schema": schema}}}
        for status, text in descriptions.items()
    }


class DomainError(Exception):
    """An error the client caused or must know about; never a 5xx for bad input."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        return problem_body(self.status_code, self.code, self.title, self.detail, **self.extra)

    def headers(self) -> dict[str, str]:
        return {}


class RetryLater(DomainError):
    """The node cannot take this now; ``Retry-After`` says when to come back (RFC 9110 §10.2.3)."""

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = max(1, retry_after)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ServiceBusy(RetryLater):
    status_code = 503
    code = "busy"
    title = "Busy"


class DatabaseUnavailable(RetryLater):
    """The database did not answer (an outage, a cut connection): come back later, never a 500."""

    status_code = 503
    code = "database_unavailable"
    title = "Database unavailable"


class TooManyRequests(RetryLater):
    status_code = 429
    code = "rate_limited"
    title = "Too many requests"


def problem_body(status: int, code: str, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": f"https://yipanqi.org/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }


def _error(name: str, status: int, code: str, title: str) -> type[DomainError]:
    return type(name, (DomainError,), {"status_code": status, "code": code, "title": title})


# Peer protocol errors (docs/protocol.md codes).
SignatureMissing = _error("SignatureMissing", 401, "signature_missing", "Signature headers missing")
SignatureInvalid = _error("SignatureInvalid", 401, "signature_invalid", "Signature invalid")
UnknownKey = _error("UnknownKey", 401, "unknown_key", "Unknown or expired key")
SignatureExpired = _error("SignatureExpired", 401, "signature_expired", "Signature outside its time window")
DigestMismatch = _error("DigestMismatch", 400, "digest_mismatch", "Content-Digest does not match the body")
Replayed = _error("Replayed", 409, "replayed", "Nonce already seen")
InvalidMessage = _error("InvalidMessage", 422, "invalid_message", "Invalid message")
SenderMismatch = _error("SenderMismatch", 403, "sender_mismatch", "Sender is not the signing node")
RecipientMismatch = _error("RecipientMismatch", 403, "recipient_mismatch", "Message is for another node")
Conflict = _error("Conflict", 409, "conflict", "Conflict")
UnknownRequest = _error("UnknownRequest", 404, "unknown_request", "Unknown request")
Forbidden = _error("Forbidden", 403, "forbidden", "Forbidden")
PayloadTooLarge = _error("PayloadTooLarge", 413, "payload_too_large", "Body larger than allowed")
UnsupportedMediaType = _error("UnsupportedMediaType", 415, "unsupported_media_type", "Unsupported media type")

# Staff API errors.
NotAuthenticated = _error("NotAuthenticated", 401, "not_authenticated", "Bearer token missing or invalid")
NotFound = _error("NotFound", 404, "not_found", "Not found")
# Any path, staff API or peer: a method the path does not take (the Allow header lists those it does).
MethodNotAllowed = _error("MethodNotAllowed", 405, "method_not_allowed", "Method not allowed")
HTTPError = _error("HTTPError", 400, "http_error", "HTTP error")  # any other refusal by the framework
InternalError = _error("InternalError", 500, "internal_error", "Internal error")  # a bug, never bad input
InvalidState = _error("InvalidState", 409, "invalid_state", "Not allowed in the current state")
ValidationFailed = _error("ValidationFailed", 422, "validation_failed", "Invalid input")
