"""`/metrics`: Prometheus text format, for a bearer token or an address in `web.metrics_allow`.

Not in the OpenAPI schema (it is not part of the JSON API). `install(app)` builds the app's metrics
(`maskwatch.web.metrics.AppMetrics`), hooks them to the monitor and adds the route.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, HTTPException, Request, status
from fastapi.responses import Response

from maskwatch.web.auth import _networks, _trusted, bearer_token, client_address
from maskwatch.web.deps import RuntimeDep
from maskwatch.web.metrics import CONTENT_TYPE, AppMetrics
from maskwatch.web.runtime import Runtime

router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> AppMetrics:
    runtime: Runtime = app.state.runtime
    metrics = AppMetrics(runtime)
    app.state.metrics = metrics
    runtime.monitor.frame_observer = metrics.observe_frame
    app.include_router(router)
    return metrics


def check_access(request: Request, rt: Runtime) -> None:
    """An address in `web.metrics_allow`, else a valid API token (401 without one or with a bad one)."""
    web = rt.settings.web
    allow = tuple(web.metrics_allow)
    if allow and _trusted(client_address(request, web.trusted_proxies), _networks(allow)):
        return
    token = bearer_token(request)
    if token is not None and rt.store.verify_token(token) is not None:
        return
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "invalid API token"
        if token is not None
        else "authentication required (Authorization: Bearer <token>)",
        headers={"WWW-Authenticate": "Bearer"},
    )


@router.get("/metrics")
def metrics(request: Request, rt: RuntimeDep) -> Response:
    """Prometheus text exposition (a sync route: the outbox counts read the database off the loop)."""
    check_access(request, rt)
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE)
