"""The Chinese names of the domain's codes, one place for the console, the reports and the demo.

The terms follow docs/domain.md (which takes them from the source policy documents).
"""

from __future__ import annotations

from service.models import (
    CaseStatus,
    CertificateStatus,
    ContraceptionMethod,
    LookupPurpose,
    MaritalStatus,
    NotificationKind,
    NotificationStatus,
    OutboxStatus,
    Outcome,
    Priority,
    Role,
    Topic,
)

TOPICS: dict[str, str] = {  # 协查事项
    Topic.marital_status: "婚育情况",
    Topic.contraception: "避孕节育",
    Topic.birth_registration: "生育登记",
    Topic.reward_eligibility: "奖励扶助资格",
    Topic.record_accuracy: "个案信息核实",
    Topic.certificate_discrepancy: "婚育证明不一致",
}
PRIORITIES: dict[str, str] = {Priority.normal: "普通", Priority.urgent: "紧急"}
OUTCOMES: dict[str, str] = {
    Outcome.confirmed: "属实",
    Outcome.not_confirmed: "不属实",
    Outcome.partially_confirmed: "部分属实",
    Outcome.not_found: "查无此人",
}
CASE_STATUSES: dict[str, str] = {
    CaseStatus.queued: "待发送",
    CaseStatus.delivered: "已送达",
    CaseStatus.received: "待签收",
    CaseStatus.acknowledged: "待反馈",
    CaseStatus.answered: "已反馈",
}
KINDS: dict[str, str] = {  # 通报类别
    NotificationKind.contraception: "避孕节育",
    NotificationKind.pregnancy: "妊娠",
    NotificationKind.birth: "生育",
    NotificationKind.health_check: "三查（康检）",
    NotificationKind.arrival: "流入",
    NotificationKind.departure: "流出",
    NotificationKind.health_record_transfer: "健康档案转移",
}
NOTIFICATION_STATUSES: dict[str, str] = {
    NotificationStatus.queued: "待发送",
    NotificationStatus.delivered: "已送达",
    NotificationStatus.received: "待确认",
    NotificationStatus.acknowledged: "已确认",
}
DELIVERY: dict[str, str] = {  # the outbox's state of a message this node sends
    OutboxStatus.pending: "排队中",
    OutboxStatus.delivered: "已送达",
    OutboxStatus.dead: "投递失败",
}
MARITAL: dict[str, str] = {
    MaritalStatus.unmarried: "未婚",
    MaritalStatus.first_marriage: "初婚",
    MaritalStatus.remarried: "再婚",
    MaritalStatus.divorced: "离婚",
    MaritalStatus.widowed: "丧偶",
}
CONTRACEPTION: dict[str, str] = {
    ContraceptionMethod.iud: "宫内节育器",
    ContraceptionMethod.female_sterilization: "女性绝育",
    ContraceptionMethod.male_sterilization: "男性绝育",
    ContraceptionMethod.implant: "皮下埋植",
    ContraceptionMethod.injection: "避孕针",
    ContraceptionMethod.oral: "口服药",
    ContraceptionMethod.condom: "避孕套",
    ContraceptionMethod.other: "其他",
    ContraceptionMethod.none: "未避孕",
}
CERTIFICATE_STATUSES: dict[str, str] = {
    CertificateStatus.valid: "有效",
    CertificateStatus.cancelled: "已注销",
    CertificateStatus.lapsed: "已失效",
}
PURPOSES: dict[str, str] = {  # why a certificate is looked up
    LookupPurpose.residence_check: "居住地查验",
    LookupPurpose.service: "提供服务",
    LookupPurpose.birth_registration: "生育登记",
}
ROLES: dict[str, str] = {
    Role.operator: "经办人",
    Role.supervisor: "负责人",
    Role.auditor: "审计",
    Role.admin: "管理员",
}
SEXES: dict[str, str] = {"F": "女", "M": "男"}
