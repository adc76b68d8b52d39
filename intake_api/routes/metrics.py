"""``GET /metrics``: Prometheus text, the API process's counters and the database's figures.

Served by a small ASGI layer outside the token guard rather than a FastAPI route: the guard sends
every path outside ``/api`` to the UI's session login, while a Prometheus server presents the API
token (``authorization: Bearer``), as any API client does. Without API_TOKEN, or with
METRICS_PUBLIC=true (a network you trust, a scraper that cannot send headers), it is open.
"""

from __future__ import annotations

import logging

# The classic text format, which generate_latest writes and every Prometheus version reads.
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.types import ASGIApp, Receive, Scope, Send

from batch_pipeline.admin.metrics import DatabaseMetrics, metric_prices
from batch_pipeline.config import Settings
from batch_pipeline.observability.metrics import render_process_metrics
from intake_api.errors import envelope_item, error_response
from intake_api.guard import token_ok

PATH = "/metrics"
log = logging.getLogger(__name__)


class MetricsEndpoint:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.database = DatabaseMetrics(metric_prices(settings))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _refuse(scope, receive, send, 405, "method_not_allowed", "Method Not Allowed", "Use GET.")
            return
        token = self.settings.api_token
        if token is not None and not self.settings.metrics_public:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            if not token_ok(headers, token.get_secret_value()):
                await _refuse(
                    scope,
                    receive,
                    send,
                    401,
                    "unauthorized",
                    "Unauthorized",
                    "A valid API token is required.",
                )
                return
        body = render_process_metrics() + await self._database(scope)
        headers = [
            (b"content-type", CONTENT_TYPE_PLAIN_0_0_4.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    async def _database(self, scope: Scope) -> bytes:
        """The database's figures; when it is down, a gauge saying so (the process's own still count)."""
        try:
            async with scope["app"].state.pool.connection() as conn:
                text = await self.database.render(conn)
            up = 1
        except Exception as exc:  # a scrape must answer; the failure is what it reports
            log.warning("metrics: database figures unavailable: %s", type(exc).__name__)
            text, up = b"", 0
        return text + (
            b"# HELP batchman_database_up 1 when the database figures below could be read\n"
            b"# TYPE batchman_database_up gauge\n" + f"batchman_database_up {up}\n".encode()
        )


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, *item: str) -> None:
    await error_response(status, [envelope_item(*item)])(scope, receive, send)
