"""asgi-csrf's check of a multipart form (a file upload), for python-multipart 0.0.26 and later.

asgi-csrf 0.11 reads a multipart body with ``FormParser(..., FileClass=...)``, an argument that
python-multipart removed in 0.0.26 (the release that fixes CVE-2026-40347): every upload form then
fails with a TypeError (simonw/asgi-csrf#38, fix proposed in #39, not released). ``install()``
puts in its place a reader with the same contract on python-multipart's low-level parser: the
form's fields up to the CSRF token, a file part before the token refused, what was read replayed
to the application. Nothing of a file is parsed or kept beyond the messages read until the token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asgi_csrf as upstream  # type: ignore[import-untyped]
from python_multipart.multipart import MultipartParser, parse_options_header

Receive = Callable[[], Awaitable[dict[str, Any]]]
TOKEN_FIELD = b"csrftoken"
MAX_TOKEN_BYTES = 1024
# The token comes first in the console's forms: a body that has not shown it in its first 256 KiB
# is refused (403) instead of being read into memory to the end.
MAX_BYTES_BEFORE_TOKEN = 256 * 1024
_SLICE = 16 * 1024


async def token_before_file(boundary: bytes, receive: Receive) -> tuple[str | None, Receive]:
    """``(token or None, replay_receive)``; raises asgi-csrf's ``FileBeforeToken`` for a file first."""
    messages: list[dict[str, Any]] = []
    header_name: list[bytes] = []
    header_value: list[bytes] = []
    headers: dict[bytes, bytes] = {}
    part: dict[str, Any] = {"name": b"", "value": bytearray()}

    def on_part_begin() -> None:
        headers.clear()
        part["name"], part["value"] = b"", bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.append(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.append(data[start:end])

    def on_header_end() -> None:
        headers[b"".join(header_name).lower()] = b"".join(header_value).strip(b" \t")
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _disposition, options = parse_options_header(headers.get(b"content-disposition"))
        if b"filename" in options:
            raise upstream.FileBeforeToken
        part["name"] = options.get(b"name", b"")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        value: bytearray = part["value"]
        if part["name"] == TOKEN_FIELD and len(value) <= MAX_TOKEN_BYTES:
            value.extend(data[start:end])

    def on_part_end() -> None:
        if part["name"] == TOKEN_FIELD:
            raise upstream.TokenFound(bytes(part["value"]).decode("utf-8", errors="replace"))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )

    async def replay_receive() -> dict[str, Any]:
        return messages.pop(0) if messages else await receive()

    more_body, seen = True, 0
    try:
        while more_body and seen <= MAX_BYTES_BEFORE_TOKEN:
            message = await receive()
            messages.append(message)
            chunk = message.get("body", b"")
            for start in range(0, len(chunk), _SLICE):  # counted as parsed, however big the message
                if seen > MAX_BYTES_BEFORE_TOKEN:
                    break
                parser.write(chunk[start : start + _SLICE])
                seen += min(_SLICE, len(chunk) - start)
            more_body = message.get("more_body", False)
    except upstream.TokenFound as found:
        return str(found.args[0]), replay_receive
    return None, replay_receive


def install() -> None:
    """Use ``token_before_file`` in asgi-csrf (once; harmless to call again)."""
    upstream._parse_multipart_form_data = token_before_file
