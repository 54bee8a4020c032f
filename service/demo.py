"""``yipanqi demo``: three real nodes on 127.0.0.1: 协查 both ways, then a register, its arrival
notifications and certificate checks between a host and an origin.

It speaks to a county officer: Chinese labels (with the API's code where an engineer needs it),
times in 北京时间, and one case reference for both sides of a 协查 (the end of its request_id).
Stopping it (Ctrl-C, SIGTERM, SIGHUP) stops the nodes; if it is killed outright, the kernel stops
them (``LocalNode.start(tied=True)``). Its temporary folder holds private keys and databases and
is removed at the end unless ``--keep``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service import names
from service.clock import utcnow
from service.localnet import LocalNode, NodeStartError, build_network, port_in_use, stop_all, wait_for
from service.models import Role
from service.sla.deadlines import SHANGHAI

NODES = [("310110", "杨浦区"), ("410105", "金水区"), ("411627", "太康县")]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

TOPICS = names.TOPICS  # 协查事项
MARITAL = names.MARITAL


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


class Stopped(BaseException):
    """A stop signal arrived (a BaseException, like KeyboardInterrupt: no ``except Exception`` eats it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    for sig in STOP_SIGNALS:  # a second Ctrl-C must not cut the clean-up short
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signum)


@contextlib.contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise ``Stopped`` in here, even SIGINT that a script set to ignored."""
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stopped)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def run_demo(console: Console, *, base_port: int, once: bool, keep: bool = False) -> int:
    ports = range(base_port, base_port + len(NODES))
    taken = [port for port in ports if port_in_use(port)]
    if taken:
        _say(console, f"[red]error:[/red] {_taken_message(taken[0], base_port)}")
        return 2
    root = Path(tempfile.mkdtemp(prefix="yipanqi-demo-"))
    nodes: list[LocalNode] = []
    with _stop_signals_raise():
        try:
            _say(console, "[bold]一盘棋 yipanqi 演示[/bold]：三个县的节点，各在自己的进程里")
            _say(console, f"  临时数据文件夹 {root}（私钥和数据库；演示结束时删除，--keep 保留）")
            _say(console, "  时间均为北京时间（Asia/Shanghai，UTC+08:00）")
            env = {"YIPANQI_RELAY_INTERVAL_SECONDS": "0.3"}
            nodes = build_network(root, NODES, base_port, env, console_logins=True)
            _start(console, nodes)
            _logins(console, nodes)
            by_id = {n.node_id: n for n in nodes}
            _verification_act(console, by_id)
            _register_act(console, by_id)
            _say(console, "以上每一步都是节点进程之间经签名的 HTTP 请求（RFC 9421）。")
            return 0 if once else _keep_running(console, nodes)
        except Stopped as stop:
            _quietly(console, f"收到 {signal.Signals(stop.signum).name}，演示中止，正在停止节点")
            return 128 + stop.signum
        except (NodeStartError, TimeoutError) as exc:
            _say(console, f"[red]error:[/red] {escape(str(exc))}")
            return 1
        finally:
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            stop_all(nodes)
            if not keep:
                shutil.rmtree(root, ignore_errors=True)
            where = (
                f"数据文件夹保留在 {root}（含私钥，用完请删除）"
                if keep
                else "节点已停止，临时数据文件夹已删除"
            )
            _quietly(console, where)


def _taken_message(port: int, base_port: int) -> str:
    message = (
        f"port {port} on 127.0.0.1 is already in use (an earlier demo still running?): "
        "stop it, or choose three other ports with --base-port"
    )
    for step in range(1, 10):
        candidate = base_port + 100 * step
        if candidate + len(NODES) <= 65536 and not any(
            port_in_use(p) for p in range(candidate, candidate + len(NODES))
        ):
            return f"{message}, e.g. --base-port {candidate}"
    return message


def _quietly(console: Console, text: str) -> None:
    """Say it if the terminal is still there (after SIGHUP it may be gone)."""
    with contextlib.suppress(OSError):
        _say(console, text)


def _start(console: Console, nodes: list[LocalNode]) -> None:
    for node in nodes:
        node.start(tied=True)
        pid = node.process.pid if node.process is not None else "-"
        keyid = node.public_key.split("=")[0]
        _say(console, f"  节点 {node.node_id} {node.name}  {node.url}  密钥 {keyid}  pid {pid}")


def _logins(console: Console, nodes: list[LocalNode]) -> None:
    """The console of each node and a sign-in for each role (演示用的一次性密码，随演示删除)."""
    _say(console, "  工作人员控制台（浏览器打开；每个角色一个演示账户）：")
    for node in nodes:
        logins = "  ".join(
            f"{names.ROLES[role]} {node.logins[role][0]} / {node.logins[role][1]}"
            for role in Role
            if role in node.logins
        )
        _say(console, f"    {node.name} {node.url}/console/  {logins}")


def _keep_running(console: Console, nodes: list[LocalNode]) -> int:
    """Until a stop signal (0) or a node that ends by itself (1)."""
    _say(console, "节点继续运行；Ctrl-C（或 kill 本进程）停止全部节点。")
    for node in nodes:
        _say(console, f"  {node.node_id} {node.name}: {node.url}/docs  operator token: {node.token}")
    try:
        while all(n.process is not None and n.process.poll() is None for n in nodes):
            time.sleep(0.5)
    except Stopped as stop:
        _quietly(console, f"收到 {signal.Signals(stop.signum).name}，正在停止节点")
        return 0
    gone = next(n for n in nodes if n.process is None or n.process.poll() is not None)
    _say(console, f"[red]error:[/red] node {gone.node_id} stopped by itself: {escape(gone.last_log_line())}")
    return 1


def _ref(request_id: str) -> str:
    """The case reference both sides show: the end of the request_id they share (a UUIDv7's random part)."""
    return request_id[-8:]


def _answered(node: LocalNode, request_id: str) -> dict[str, Any] | None:
    case = _case(node, request_id)
    return case if case is not None and case["status"] == "answered" else None


def _case(node: LocalNode, request_id: str) -> dict[str, Any] | None:
    page = node.api("GET", "/api/v1/verification-requests", params={"page_size": 200}).json()
    for item in page["items"]:
        if item["request_id"] == request_id:
            return item  # type: ignore[no-any-return]
    return None


def _topic(code: str) -> str:
    return f"{TOPICS.get(code, code)} ({code})"


def _say(console: Console, text: str) -> None:
    """A line of Chinese prose: left whole for the terminal to wrap (rich would break it at a space)."""
    console.print(text, soft_wrap=True)


def _verification_act(console: Console, by_id: dict[str, LocalNode]) -> None:
    """协查 both ways: sent, 签收 and 反馈 by the answering county's staff."""
    console.rule("协查 (verification requests)")
    sent = []
    for r in REQUESTS:
        body = asdict(r)
        body["recipient"] = body.pop("answerer")
        del body["asker"]
        response = by_id[r.asker].api("POST", "/api/v1/verification-requests", json=body)
        response.raise_for_status()
        case = response.json()
        sent.append((r.asker, r.answerer, case))
        urgency = "紧急，重点服务对象" if r.key_target else ("紧急" if r.priority == "urgent" else "一般")
        _say(
            console,
            f"  {by_id[r.asker].name} → {by_id[r.answerer].name}：发出协查 {_ref(case['request_id'])}，"
            f"{_topic(r.topic)}（{urgency}）",
        )
    for _asker, answerer, case in sent:
        incoming = wait_for(lambda a=answerer, c=case: _case(by_id[a], c["request_id"]))
        origin = by_id[answerer]
        path = f"/api/v1/verification-requests/{incoming['id']}"
        origin.api("POST", f"{path}/ack", json={}).raise_for_status()
        reply = {"outcome": "confirmed", "findings": REPLIES[case["topic"]]}
        origin.api("POST", f"{path}/reply", json=reply).raise_for_status()
        _say(console, f"  {origin.name} 签收并反馈协查 {_ref(case['request_id'])}")
    table = Table(
        "协查编号", "发起→应答", "协查事项", "反馈期限", "反馈时间", title="发起方节点上的协查：均已反馈"
    )
    for asker, answerer, case in sent:
        final = wait_for(lambda a=asker, c=case: _answered(by_id[a], c["request_id"]))
        table.add_row(
            _ref(case["request_id"]),
            f"{by_id[asker].name}→{by_id[answerer].name}",
            TOPICS.get(case["topic"], case["topic"]),
            _due_day(final["due_at"]),
            _local(final["answered_at"]),
        )
    console.print(table)
    _say(console, "  反馈期限到当日 24 时止，反馈时间为北京时间 (UTC+08:00)。")
    _say(console, "  协查编号是 request_id 的末 8 位，发起方和应答方的节点上相同。")


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


def _lookup(host: LocalNode, line: str) -> dict[str, Any]:
    number, name = line.split(",")[:2]
    body = {"id_number": number, "name": name, "purpose": "service"}
    response = host.api("POST", "/api/v1/certificates/lookup", json=body)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def _register_act(console: Console, by_id: dict[str, LocalNode]) -> None:
    """流动人口个案, 流入通报 and 婚育证明查验 between the host 金水区 and the origin 太康县."""
    host, origin = by_id["410105"], by_id["411627"]
    console.rule("流动人口个案、流入通报和婚育证明查验")
    _import(origin, REGISTER)
    _say(console, "  太康县 登记本县妇女：她们的电子婚育证明随之存在（信息登记入库即视为办理）")
    report = _import(host, [*REGISTER, NOT_AT_ORIGIN])
    _say(
        console,
        f"  金水区 导入流动人口个案（{report['encoding'].upper()} 编码的 CSV）：入库 {report['stored']} 人，"
        f"自动发出流入通报 {report['notifications']} 件",
    )
    incoming = wait_for(
        lambda: _arrivals(origin, "incoming") if len(_arrivals(origin, "incoming")) == 3 else None
    )
    for item in incoming:
        origin.api("POST", f"/api/v1/notifications/{item['id']}/ack").raise_for_status()
    _say(console, f"  太康县 接收确认 {len(incoming)} 件流入通报")
    wait_for(lambda: all(n["status"] == "acknowledged" for n in _arrivals(host, "outgoing")))
    table = Table(
        "姓名", "户籍地", "查验结果", "婚育证明编号", "婚姻状况", "建议协查", title="金水区 婚育证明查验"
    )
    for line in [*REGISTER, NOT_AT_ORIGIN]:
        answer = _lookup(host, line)
        certificate = answer.get("certificate") or {}
        marital = certificate.get("marital_status")
        table.add_row(
            line.split(",")[1],
            by_id[answer["origin_node"]].name if answer["origin_node"] in by_id else answer["origin_node"],
            "查到" if answer["found"] else "未查到",
            certificate.get("certificate_no", "-"),
            MARITAL.get(marital, marital) if marital else "-",
            "是" if answer["discrepancy_request"]["suggested"] else "否",
        )
    console.print(table)
    _check_rate(console, host)


def _check_rate(console: Console, host: LocalNode) -> None:
    """The rate right after the first checks is low on purpose: say why, then show it rise."""
    year = utcnow().astimezone(SHANGHAI).year
    rate = _rate(host, year)
    _say(console, f"  金水区 {year} 年婚育证明查验率 (check_rate)：{rate}")
    _say(
        console,
        "  说明：三人今年各查验了 1 次，即流入后的首次查验。查验率的分子只计本年内查验满 2 次的人"
        "（首次查验算 1 次，见 service/certificates/rates.py），所以刚查完一遍分子还是 0，并非查验失败。",
    )
    _lookup(host, REGISTER[0])
    _say(console, f"  金水区 再次查验 王秀英（本年第 2 次）后，查验率：{_rate(host, year)}")


def _rate(host: LocalNode, year: int) -> str:
    rate = host.api("GET", "/api/v1/certificates/check-rate", params={"year": year}).json()
    share = f"（{rate['rate']:.0%}）" if rate["rate"] is not None else ""
    return f"{rate['numerator']}/{rate['denominator']}{share}"


def _arrivals(node: LocalNode, direction: str) -> list[dict[str, Any]]:
    params = {"direction": direction, "kind": "arrival", "page_size": 200}
    return node.api("GET", "/api/v1/notifications", params=params).json()["items"]  # type: ignore[no-any-return]


def _local(value: str | None) -> str:
    """An instant in 北京时间 (the note under the table says so)."""
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")


def _due_day(value: str | None) -> str:
    """A deadline is the end (24:00) of a Shanghai day: show that day."""
    if not value:
        return "-"
    return (datetime.fromisoformat(value).astimezone(SHANGHAI) - timedelta(seconds=1)).strftime("%Y-%m-%d")
