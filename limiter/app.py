"""The composition root: one limiter instance's HTTP application, wired once.

Every part is built here and handed what it needs, so no module looks another up at run time:

* the lease routes (:mod:`limiter.web.leases`) serve the instance;
* one :class:`~limiter.redis.creditstore.CreditStore` on the instance's Redis client serves the
  credit routes (:mod:`limiter.web.credits`) and the proxy's key charges;
* the :class:`~limiter.proxy.service.Proxy` gets the instance and that credit store, its routes
  (:mod:`limiter.proxy.routes`), and gives ``/health`` its concurrency section;
* ``/openapi.json`` serves the API's OpenAPI document (:mod:`limiter.openapi`);
* one Prometheus registry holds the instance's, the credit store's and the proxy's collectors, served
  at ``/metrics`` by prometheus_client's own aiohttp handler.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from limiter import openapi
from limiter.fleet.instance import LimiterInstance
from limiter.proxy import queue_api
from limiter.proxy import routes as proxy_routes
from limiter.proxy.metrics import ProxyCollector
from limiter.proxy.service import Proxy
from limiter.redis.creditstore import CreditStore
from limiter.web import credits, leases
from limiter.web.metrics import CreditsCollector, InstanceCollector
from limiter.web.toolkit import ADMIN_TOKEN, BODY_TIMEOUT, MAX_BODY_BYTES, errors_as_json, json_response

REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)


def build_app(instance: LimiterInstance) -> web.Application:
    """The aiohttp application serving ``instance``: leases, credit budgets, the LLM proxy, metrics."""
    app = web.Application(middlewares=[errors_as_json], client_max_size=MAX_BODY_BYTES)
    app[ADMIN_TOKEN] = instance.settings.admin_token or ""
    app[BODY_TIMEOUT] = instance.settings.body_timeout_seconds
    credit_store = CreditStore.for_store(instance.store)
    proxy = Proxy(instance, credit_store)

    leases.install(app, instance, concurrency=lambda: queue_api.concurrency(proxy))
    credits.install(app, credit_store)
    proxy_routes.install(app, proxy)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(InstanceCollector(instance))
    registry.register(CreditsCollector(credit_store))
    registry.register(ProxyCollector(proxy))
    app[REGISTRY] = registry
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    document = openapi.document()

    async def openapi_json(request: web.Request) -> web.Response:
        del request
        return json_response(document)

    app.router.add_get("/openapi.json", openapi_json)
    return app
