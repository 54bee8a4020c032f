"""/docs works on a network without the internet: the page and every file it loads come from the node.

A county's node runs on a government network that reaches no CDN. The page, its CSS and its
scripts are served from the installed package (fastapi-offline ships Swagger UI's files); this
checks that nothing they reference is on another host. ReDoc is not offered (its bundle loads its
logo from its vendor's CDN).
"""

from __future__ import annotations

import asyncio
import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from service.main import create_app

NODE = "http://node.test"  # the node's own origin, whatever name it is reached by
URL = re.compile(rb"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}""")
CSS_REFERENCE = re.compile(rb"""url\(\s*['"]?([^'")]*)|@import\s+['"]([^'"]+)""")
# Where a script could make the browser load from a host: an element's src, a fetch, a stylesheet.
JS_LOAD = re.compile(rb"""(?:\bsrc\s*[:=]\s*|fetch\(\s*|@import\s+|\burl\(\s*)['"`](?:https?:)?//[^'"`]+""")


class References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:  # noqa: ARG002
        self.found += [value for name, value in attrs if name in ("src", "href") and value]


def fetch(*paths: str) -> list[httpx.Response]:
    """GET each path from the app in this process (no lifespan: the docs need no database)."""

    async def get_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(transport=transport, base_url=NODE) as client:
            return [await client.get(path) for path in paths]

    return asyncio.run(get_all())


def outside_hosts(text: bytes) -> list[bytes]:
    return URL.findall(text)


def test_docs_page_and_every_file_it_loads_come_from_the_node() -> None:
    (page,) = fetch("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert outside_hosts(page.content) == []
    parser = References()
    parser.feed(page.text)
    assert len(parser.found) == 3, parser.found  # the stylesheet, the icon, the script
    for reference in parser.found:
        assert urlsplit(urljoin(f"{NODE}/docs", reference)).netloc == urlsplit(NODE).netloc, reference
    assets = dict(zip(parser.found, fetch(*parser.found), strict=True))
    for reference, asset in assets.items():
        assert asset.status_code == 200, reference
        if reference.endswith(".css"):
            for url, imported in CSS_REFERENCE.findall(asset.content):
                target = (url or imported).strip()
                assert target.startswith(b"data:") or not URL.match(target), target[:80]
        if reference.endswith(".js"):
            assert JS_LOAD.findall(asset.content) == [], reference
    # The Swagger UI bundle's one default that fetches from elsewhere (its online validator) is off.
    assert '"validatorUrl": null' in page.text
    assert "openapi.json" in page.text


@pytest.mark.parametrize("path", ["/redoc", "/docs/assets/../main.py", "/docs/assets/index.html"])
def test_nothing_else_is_served(path: str) -> None:
    (response,) = fetch(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
