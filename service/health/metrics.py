"""/metrics in the Prometheus text format: message counters, relay queue, overdue items, the month's rates.

Counters and the latency histogram count what this process saw since it started (per replica, as
Prometheus expects: sum them over replicas). The gauges are read from the database at scrape time
by COUNT and MIN queries over indexed columns, so every replica reports the same node-wide values.
Each app has its own ``CollectorRegistry`` (not the global default): several apps in one test
process do not clash.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterator
from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlmodel import Session, col

from service.clock import utcnow
from service.db import read_session
from service.errors import NotAuthenticated, problem_responses
from service.models import Direction, OutboxMessage, OutboxStatus, StaffNotice
from service.sla.deadlines import SHANGHAI
from service.sla.rates import month_rates
from service.sla.sweeps import QUEUES

log = logging.getLogger(__name__)

# Deliveries wait for retries with backoff: from a fraction of a second to hours.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class NodeMetrics:
    """The registry of one app, with the instruments the exchange increments."""

    def __init__(self, session_factory: Callable[[], Session] = read_session) -> None:
        self.registry = CollectorRegistry()
        self.peer_messages = Counter(
            "yipanqi_peer_messages",
            "Peer messages by type, direction (incoming: received here; outgoing: delivery attempts)"
            " and outcome (accepted, duplicate, answered, rejected; delivered, retry, dead)",
            ["type", "direction", "outcome"],
            registry=self.registry,
        )
        self.delivery_latency = Histogram(
            "yipanqi_delivery_latency_seconds",
            "From an outbox message's creation to its signed receipt (delivered_at - created_at)",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.busy = Counter(
            "yipanqi_http_busy",
            "Requests answered 503 busy with Retry-After by admission (service/admission.py)",
            registry=self.registry,
        )
        self.registry.register(DatabaseCollector(session_factory))

    def incoming(self, message_type: str, outcome: str) -> None:
        self.peer_messages.labels(message_type, "incoming", outcome).inc()

    def outgoing(self, message_type: str, outcome: str) -> None:
        self.peer_messages.labels(message_type, "outgoing", outcome).inc()

    def delivered(self, message_type: str, created_at: datetime, delivered_at: datetime) -> None:
        seconds = max((delivered_at - created_at).total_seconds(), 0.0)
        self.delivery_latency.labels(message_type).observe(seconds)


class DatabaseCollector(Collector):
    """Gauges computed at scrape time from the database."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self.session_factory = session_factory

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the families depend on the data; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("yipanqi_metrics_database_up", "1 when the gauges below could be read")
        try:
            with self.session_factory() as session:
                families = [*self._relay(session), self._overdue(session), self._notices(session)]
                families += self._rates(session)
        except Exception as exc:  # a scrape must answer even when the database does not
            log.warning("metrics: database gauges unavailable error=%s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _relay(self, session: Session) -> list[Metric]:
        now = utcnow()
        conn = session.connection()
        depth, oldest = conn.execute(
            select(func.count(), func.min(col(OutboxMessage.created_at))).where(
                col(OutboxMessage.status) == OutboxStatus.pending
            )
        ).one()
        is_dead = col(OutboxMessage.status) == OutboxStatus.dead
        dead = conn.execute(select(func.count()).select_from(OutboxMessage).where(is_dead)).scalar_one()
        queue = GaugeMetricFamily("yipanqi_relay_queue_depth", "Outbox messages waiting for delivery")
        queue.add_metric([], depth)
        age = GaugeMetricFamily(
            "yipanqi_relay_oldest_pending_age_seconds", "Age of the oldest undelivered message (0: none)"
        )
        age.add_metric([], max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0)
        dead_gauge = GaugeMetricFamily(
            "yipanqi_relay_dead_messages", "Outbox messages given up on (an admin may re-run them)"
        )
        dead_gauge.add_metric([], dead)
        return [queue, age, dead_gauge]

    def _overdue(self, session: Session) -> Metric:
        """Open items past due_at now (the same test as the lists' ``overdue`` flag)."""
        now = utcnow()
        gauge = GaugeMetricFamily(
            "yipanqi_overdue_items",
            "Open items past their deadline: incoming (we owe the answer), outgoing (the peer does)",
            labels=["item_type", "direction"],
        )
        for queue in QUEUES:
            t = queue.table
            for direction, statuses in (
                (Direction.incoming, queue.open_incoming),
                (Direction.outgoing, queue.open_outgoing),
            ):
                count = (
                    session.connection()
                    .execute(
                        select(func.count())
                        .select_from(t)
                        .where(t.c.direction == direction, t.c.status.in_(statuses), t.c.due_at < now)
                    )
                    .scalar_one()
                )
                gauge.add_metric([queue.item_type.value, direction.value], count)
        return gauge

    def _notices(self, session: Session) -> Metric:
        gauge = GaugeMetricFamily(
            "yipanqi_unread_notices", "Staff notices not yet read, by role and kind", labels=["role", "kind"]
        )
        rows = (
            session.connection()
            .execute(
                select(col(StaffNotice.role), col(StaffNotice.kind), func.count())
                .where(col(StaffNotice.read_at).is_(None))
                .group_by(col(StaffNotice.role), col(StaffNotice.kind))
            )
            .all()
        )
        for role, kind, count in rows:
            gauge.add_metric([str(role), str(kind)], count)
        return gauge

    def _rates(self, session: Session) -> list[Metric]:
        """The current month's headline rates (service/sla/rates.py), numerator and denominator too."""
        first = utcnow().astimezone(SHANGHAI).date().replace(day=1)
        labels = ["metric", "direction", "month"]
        numerator = GaugeMetricFamily(
            "yipanqi_rate_numerator", "The current month's rates: items on time (or confirmed)", labels=labels
        )
        denominator = GaugeMetricFamily(
            "yipanqi_rate_denominator", "The current month's rates: items counted", labels=labels
        )
        rate = GaugeMetricFamily(
            "yipanqi_rate", "numerator / denominator; absent while the denominator is 0", labels=labels
        )
        month = f"{first:%Y-%m}"
        for row in month_rates(session, first):
            if row.dimension not in ("all", "year"):
                continue  # per peer, topic and kind: the monthly report has them
            values = [row.metric, row.direction, month]
            numerator.add_metric(values, row.numerator)
            denominator.add_metric(values, row.denominator)
            if row.rate is not None:
                rate.add_metric(values, row.rate)
        return [numerator, denominator, rate]


router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
        **problem_responses({401: "not_authenticated (only when YIPANQI_METRICS_TOKEN is set)"}),
    },
)
def metrics(request: Request) -> Response:
    """Prometheus metrics of this replica (counters) and of the node (gauges read at scrape time).

    Served only when enabled (YIPANQI_METRICS_ENABLED); with YIPANQI_METRICS_TOKEN set, to the
    bearer of that token alone."""
    token = request.app.state.settings.metrics_token
    if token is not None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, b"Bearer " + token.get_secret_value().encode()):
            raise NotAuthenticated("Authorization: Bearer <YIPANQI_METRICS_TOKEN> is required")
    node_metrics: NodeMetrics = request.app.state.metrics
    return Response(generate_latest(node_metrics.registry), media_type=CONTENT_TYPE_LATEST)
