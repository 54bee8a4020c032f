"""``yipanqi demo``: three real nodes on 127.0.0.1: 协查 both ways, then a register, its arrival
notifications and certificate checks between a host and an origin."""

from __future__ import annotations

import signal
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from service import idnumbers
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


def _answered(node: LocalNode, request_id: str) -> dict[str, Any] | None:
    case = _case(node, request_id)
    return case if case is not None and case["status"] == "answered" else None


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
        _verification_act(console, by_id)
        _register_act(console, by_id)
        console.print("Everything above crossed between the processes as signed HTTP (RFC 9421).")
        if once:
            return 0
        console.print("Nodes keep running. Ctrl-C to stop.")
        for node in nodes:
            console.print(f"  {node.node_id}: {node.url}/docs  operator token: {node.token}")
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    finally:
        for node in nodes:
            node.stop()


def _verification_act(console: Console, by_id: dict[str, LocalNode]) -> None:
    """协查 both ways: sent, 签收 and 反馈 by the answering county's staff."""
    console.rule("协查 verification requests")
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
        path = f"/api/v1/verification-requests/{incoming['id']}"
        origin.api("POST", f"{path}/ack", json={}).raise_for_status()
        reply = {"outcome": "confirmed", "findings": REPLIES[case["topic"]]}
        origin.api("POST", f"{path}/reply", json=reply).raise_for_status()
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


REGISTER_HEADER = "身份证号,姓名,性别,出生日期,户籍地代码,现居住地代码,流入日期,婚姻状况,结婚日期\n"
REGISTER = [  # 太康县's women living in 金水区
    "411627199503080024,王秀英,女,1995-03-08,411627,410105,2026-03-01,初婚,2019-05-01\n",
    "411627199107150043,张丽,女,1991-07-15,411627,410105,2026-04-12,初婚,2015-10-01\n",
]
NOT_AT_ORIGIN = "411627199802140023,李娟,女,1998-02-14,411627,410105,2026-05-20,初婚,2021-01-01\n"


def _import(node: LocalNode, rows: list[str]) -> dict[str, Any]:
    files = {"file": ("register.csv", (REGISTER_HEADER + "".join(rows)).encode("gbk"), "text/csv")}
    response = node.api("POST", "/api/v1/people/import", files=files)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def _register_act(console: Console, by_id: dict[str, LocalNode]) -> None:
    """流动人口个案, 流入通报 and 婚育证明查验 between the host 金水区 and the origin 太康县."""
    host, origin = by_id["410105"], by_id["411627"]
    console.rule("register, 通报 and 婚育证明")
    _import(origin, REGISTER)
    console.print("  太康县 registers its women: their electronic 婚育证明 exist (信息登记入库即视为办理)")
    report = _import(host, [*REGISTER, NOT_AT_ORIGIN])
    console.print(
        f"  金水区 imports its register ({report['encoding']} CSV): {report['stored']} stored, "
        f"{report['notifications']} arrival notifications (流入通报) sent by themselves"
    )
    incoming = wait_for(
        lambda: _arrivals(origin, "incoming") if len(_arrivals(origin, "incoming")) == 3 else None
    )
    for item in incoming:
        origin.api("POST", f"/api/v1/notifications/{item['id']}/ack").raise_for_status()
    console.print(f"  太康县 acknowledges (接收确认) {len(incoming)} arrivals")
    wait_for(lambda: all(n["status"] == "acknowledged" for n in _arrivals(host, "outgoing")))
    table = Table("person", "origin", "found", "certificate", "marital status", "offered 协查")
    for line in [*REGISTER, NOT_AT_ORIGIN]:
        number, name = line.split(",")[:2]
        answer = host.api(
            "POST",
            "/api/v1/certificates/lookup",
            json={"id_number": number, "name": name, "purpose": "service"},
        ).json()
        certificate = answer.get("certificate") or {}
        table.add_row(
            idnumbers.mask(number),
            answer["origin_node"],
            str(answer["found"]),
            certificate.get("certificate_no", "-"),
            certificate.get("marital_status", "-"),
            "yes" if answer["discrepancy_request"]["suggested"] else "no",
        )
    console.print(table)
    year = datetime.now(SHANGHAI).year
    rate = host.api("GET", "/api/v1/certificates/check-rate", params={"year": year}).json()
    console.print(
        f"  金水区 婚育证明查验率 {year}: {rate['numerator']}/{rate['denominator']} "
        "(a woman counts after a first check and ≥ 2 look-ups in the year)"
    )


def _arrivals(node: LocalNode, direction: str) -> list[dict[str, Any]]:
    params = {"direction": direction, "kind": "arrival", "page_size": 200}
    return node.api("GET", "/api/v1/notifications", params=params).json()["items"]  # type: ignore[no-any-return]


def _local(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone(SHANGHAI).strftime("%m-%d %H:%M")


def _due_day(value: str | None) -> str:
    """A deadline is the end (24:00) of a Shanghai day: show that day."""
    if not value:
        return "-"
    return (datetime.fromisoformat(value).astimezone(SHANGHAI) - timedelta(seconds=1)).strftime("%Y-%m-%d")
