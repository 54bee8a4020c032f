"""Types every staff API route and model shares: database ids and page numbers, bounded.

A number past what the database stores (INTEGER is 32 bits on PostgreSQL, 64 on SQLite) used to
reach the query and fail there as a 500; bounded here, it is a 422 before any query, and the
published contract says the range.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from pydantic import Field

DB_ID_MAX = 2**31 - 1  # the largest INTEGER on every backend the node supports

# A row's id: in a path (``/{person_id:int}``), a query or a body.
DbId = Annotated[int, Field(ge=1, le=DB_ID_MAX, description="a record's id (1 … 2147483647)")]

PAGE_MAX = 100_000
PageNumber = Annotated[int, Query(ge=1, le=PAGE_MAX, description="1 for the first page")]
PageSize = Annotated[int, Query(ge=1, le=200, description="items per page")]
