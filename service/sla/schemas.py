"""What the SLA rates and the monthly report look like to staff (JSON, CSV and XLSX share these)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

Metric = Literal[
    "feedback_rate",
    "key_target_feedback_rate",
    "processing_rate",
    "send_receive_rate",
    "key_send_receive_rate",
    "check_rate",
    "accuracy_rate",
]
Dimension = Literal["all", "peer", "topic", "priority", "kind", "year"]
# A report month, 2000-01 … 2100-12 (rates.parse_month); the current or a future month is refused too.
MONTH_PATTERN = r"^(20[0-9]{2}|2100)-(0[1-9]|1[0-2])$"

METRIC_NAMES: dict[str, str] = {
    "feedback_rate": "协查信息反馈率",
    "key_target_feedback_rate": "重点服务对象协查信息反馈率",
    "processing_rate": "待办事宜处理率",
    "send_receive_rate": "信息发送接收率",
    "key_send_receive_rate": "重点服务管理对象信息发送接收率",
    "check_rate": "婚育证明查验率",
    "accuracy_rate": "个案信息准确率",
}
DIRECTION_NAMES = {"incoming": "应答方(被协查/接收)", "outgoing": "发起方(协查/发送)", "node": "本节点"}
DIMENSION_NAMES = {
    "all": "合计",
    "peer": "对方节点",
    "topic": "协查事项",
    "priority": "紧急程度",
    "kind": "类别",
    "year": "年度累计",
}


class Rate(BaseModel):
    numerator: int = Field(ge=0)
    denominator: int = Field(ge=0)
    rate: float | None = Field(description="numerator / denominator; null when the denominator is 0")

    @classmethod
    def of(cls, numerator: int, denominator: int) -> Rate:
        rate = numerator / denominator if denominator else None
        return cls(numerator=numerator, denominator=denominator, rate=rate)


class RateRow(BaseModel):
    """One rate of the month: a metric, seen from one side, for one group (or all)."""

    metric: Metric
    metric_name: str = Field(description="the metric's Chinese name")
    direction: Literal["incoming", "outgoing", "node"] = Field(
        description="incoming: we are the answering/receiving side; outgoing: the asking/sending side"
    )
    dimension: Dimension
    value: str = Field(description="the group: a peer's code, a topic, priority, kind; '' for all")
    numerator: int = Field(ge=0)
    denominator: int = Field(ge=0)
    rate: float | None
    target: float | None = None
    below_target: bool = False


class MonthlyReport(BaseModel):
    """月报: the month's rates, stored when first generated so it reads the same every time."""

    month: str = Field(pattern=MONTH_PATTERN, examples=["2026-10"])
    node_id: str
    generated_at: datetime
    period_start: datetime = Field(description="00:00 on the 1st, Asia/Shanghai, as UTC")
    period_end: datetime = Field(description="00:00 on the 1st of the next month, Asia/Shanghai (exclusive)")
    due_by: date = Field(description="last day to submit: due before the 5th of the next month")
    targets: dict[str, float]
    rows: list[RateRow]
    below_target: int = Field(ge=0, description="how many rows are below their target")
