"""The proxy's HTTP routes: the OpenAI and Ollama endpoints (:data:`limiter.proxy.wire.ROUTES`) and
the queue endpoints (:mod:`limiter.proxy.queue_api`) and what the proxy answers from the policy
(:mod:`limiter.proxy.catalog`), bound to one :class:`Proxy`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from limiter.proxy import catalog, queue_api
from limiter.proxy.service import NotFound, Proxy
from limiter.proxy.upstream import error_response
from limiter.proxy.wire import ROUTES, Route
from limiter.web.toolkit import BadRequest

PROXY: web.AppKey[Proxy] = web.AppKey("proxy", Proxy)


def _route_handler(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await request.app[PROXY].handle(request, route)
        except NotFound as exc:
            return error_response(route.api, 404, str(exc))
        except BadRequest as exc:
            return error_response(route.api, 400, str(exc))

    handler.__name__ = f"proxy_{route.kind}_{route.api}"
    return handler


def install(app: web.Application, proxy: Proxy) -> None:
    """Add the proxy's routes and its client session's life cycle to ``app``."""
    app[PROXY] = proxy
    for route in ROUTES:
        app.router.add_post(route.path, _route_handler(route))
    app.router.add_routes(queue_api.routes(proxy))
    app.router.add_routes(catalog.routes(proxy))
    app.on_startup.append(proxy.start)
    app.on_cleanup.append(proxy.close)
