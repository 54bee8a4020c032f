"""``yipanqi demo``: three real nodes on 127.0.0.1 exchanging 协查 requests both ways."""

from __future__ import annotations

import signal
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from service.localnet import LocalNode, build_network, wait_for
from service.sla.deadlines import SHANGHAI

NODES = [("310110", "杨浦区"), ("410105", "金水区"), ("411627", "太康县")]


@dataclass(frozen=True)
class DemoRequest:
    asker: str
    answerer: str
    subject: dict[str, str]
    topic: str
    question: str
    priority: str = "normal"
    key_target: bool = False


def _woman(id_number: str, name: str, birth_date: str) -> dict[str, str]:
    return {"id_number": id_number, "name": name, "sex": "F", "birth_date": birth_date}


REQUESTS = [
    DemoRequest(
        "410105",
        "411627",
        _woman("411627199503080024", "王秀英", "1995-03-08"),
        "marital_status",
        "请核实该对象婚育情况。",
    ),
    DemoRequest(
        "310110",
        "411627",
        _woman("411627199802140023", "李娟", "1998-02-14"),
        "contraception",
        "该对象已孕，请核实避孕节育情况。",
        priority="urgent",
        key_target=True,
    ),
    DemoRequest(
        "411627",
        "410105",
        _woman("411627199107150043", "张丽", "1991-07-15"),
        "record_accuracy",
        "请核实该对象现居住地信息是否准确。",
    ),
]
REPLIES = {
    "marital_status": "已婚，一孩，信息一致。",
    "contraception": "已落实长效避孕措施。",
    "record_accuracy": "现居住地信息准确。",
}


def _case(node: LocalNode, request_id: str) -> dict[str, Any] | None:
    page = node.api("GET", "/api/v1/verification-requests", params={"page_size": 200}).json()
    for item in page["items"]:
        if item["request_id"] == request_id:
            return item  # type: ignore[no-any-return]
    return None


def run_demo(console: Console, *, base_port: int, once: bool) -> int:
    if not console.is_terminal:
        console.width = max(console.width, 110)
    root = Path(tempfile.mkdtemp(prefix="yipanqi-demo-"))
    console.print(f"[bold]一盘棋 yipanqi demo[/bold]: three nodes, data in {root}")
    nodes = build_network(root, NODES, base_port, {"YIPANQI_RELAY_INTERVAL_SECONDS": "0.3"})
    by_id = {n.node_id: n for n in nodes}
    try:
        for node in nodes:
            node.start()
            console.print(
                f"  node {node.node_id} {node.name} at {node.url}  (key {node.public_key.split('=')[0]})"
            )
        sent = []
        for r in REQUESTS:
            body = asdict(r)
            body["recipient"] = body.pop("answerer")
            del body["asker"]
            response = by_id[r.asker].api("POST", "/api/v1/verification-requests", json=body)
            response.raise_for_status()
            sent.append((r.asker, r.answerer, response.json()))
            console.print(f"  {r.asker} → {r.answerer}: 协查 {r.topic} sent (case {response.json()['id']})")
        for _asker, answerer, case in sent:
            incoming = wait_for(lambda a=answerer, c=case: _case(by_id[a], c["request_id"]))
            origin = by_id[answerer]
            origin.api(
                "POST", f"/api/v1/verification-requests/{incoming['id']}/ack", json={}
            ).raise_for_status()
            origin.api(
                "POST",
                f"/api/v1/verification-requests/{incoming['id']}/reply",
                json={"outcome": "confirmed", "findings": REPLIES[case["topic"]]},
            ).raise_for_status()
            console.print(f"  {answerer} 签收 and 反馈 case {incoming['id']}")
        table = Table("request", "route", "topic", "status", "reply due by", "answered")
        for asker, answerer, case in sent:
            final = wait_for(
                lambda a=asker, c=case: (
                    (x := _case(by_id[a], c["request_id"])) and x["status"] == "answered" and x
                )
            )
            table.add_row(
                "…" + case["request_id"][-8:],
                f"{by_id[asker].name}→{by_id[answerer].name}",
                case["topic"],
                final["status"],
                _due_day(final["due_at"]),
                _local(final["answered_at"]),
            )
        console.print(table)
        console.print("Every request, 签收 and 反馈 above crossed between the processes as signed HTTP.")
        if once:
            return 0
        console.print("Nodes keep running; staff tokens are in the logs above. Ctrl-C to stop.")
        for node in nodes:
            console.print(f"  {node.node_id}: {node.url}/docs  operator token: {node.token}")
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    finally:
        for node in nodes:
            node.stop()


def _local(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone(SHANGHAI).strftime("%m-%d %H:%M")


def _due_day(value: str | None) -> str:
    """A deadline is the end (24:00) of a Shanghai day: show that day."""
    if not value:
        return "-"
    return (datetime.fromisoformat(value).astimezone(SHANGHAI) - timedelta(seconds=1)).strftime("%Y-%m-%d")
