"""What the LLM proxy shows of its queues, and the admin's lever on them (SPEC section 6):

* ``GET /queue/stats[?model=M]``: per proxied model, limits, depth, totals and mean times;
* ``GET /queue/memory``: memory as the container sees it, and ``recommended_parallel``;
* the ``concurrency`` section of ``/health``, from the same numbers;
* ``POST /admin/queue/update``: lower a model's ``parallel_limit`` on this instance (never above its
  fleet share) or set its ``queue_limit``.

docs/proxy.md explains every field.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from limiter.fleet.memory import DEFAULT_BUDGET_SHARE, MemoryInfo, read_memory
from limiter.proxy.service import Proxy
from limiter.web.toolkit import BadRequest, json_error, json_response, read_body, require_admin

log = logging.getLogger("fleet_limiter.proxy")


def stats(proxy: Proxy, model: str | None = None) -> dict[str, Any]:
    """``GET /queue/stats``: every proxied model, or one."""
    default_parallel, default_queue = proxy.defaults()
    names = [m.name for m in proxy.proxied_models()] if model is None else [model]
    return {
        "default_parallel": default_parallel,
        "default_queue_limit": default_queue,
        "models": {
            name: proxy.queue(name).stats(proxy.fleet_share(name), proxy.default_queue_limit(name))
            for name in names
        },
    }


def memory(proxy: Proxy, mem: MemoryInfo | None = None) -> dict[str, Any]:
    """``GET /queue/memory``, and the ``memory`` of ``/health``'s concurrency section."""
    mem = mem or read_memory()
    gib = 2**30
    return {
        "total_gb": round(mem.total / gib, 3),
        "available_gb": round(mem.available / gib, 3),
        "used_gb": round(mem.used / gib, 3),
        "percent": round(mem.used / mem.total * 100, 1) if mem.total else 0.0,
        "recommended_parallel": recommended_parallel(proxy, mem),
        "source": mem.source,
    }


def recommended_parallel(proxy: Proxy, mem: MemoryInfo) -> int:
    """Proxied requests this instance can run at once: the proxied models' parallel limits summed,
    and, where job types declare ``estimate.memoryKB``, no more than fit in memory:
    ``floor(usable KiB / the largest memoryKB)``, usable being the instance's memory budget
    (``memoryBudgetMB``, else 80% of the container's or host's total), and at most what is
    available now plus what running leases already hold."""
    total = sum(proxy.parallel_limit(m.name) for m in proxy.proxied_models())
    spec, manager = proxy.instance.spec, proxy.instance.manager
    if spec is None or manager is None:
        return 0
    proxied = {m.name for m in proxy.proxied_models()}
    per_request = max(
        (j.estimate.memory_kb for j in spec.job_types if proxied & set(spec.models_of(j))), default=0
    )
    if per_request <= 0:
        return total
    budget = manager.memory_budget_kb
    if budget is None:
        budget = int(mem.total * DEFAULT_BUDGET_SHARE) // 1024
    usable = min(budget, mem.available // 1024 + max(0, manager.memory_in_use_kb))
    return min(total, usable // per_request)


def concurrency(proxy: Proxy) -> dict[str, Any]:
    """The ``concurrency`` section of ``/health``."""
    default_parallel, default_queue = proxy.defaults()
    return {
        "default_parallel": default_parallel,
        "default_queue_limit": default_queue,
        "total_models": len(proxy.proxied_models()),
        "memory": memory(proxy),
    }


class QueueUpdateBody(BaseModel):
    """The body of ``POST /admin/queue/update``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = Field(min_length=1)
    parallel_limit: int | None = Field(default=None, ge=0)
    queue_limit: int | None = Field(default=None, ge=0)


def _not_proxied(proxy: Proxy, model: str) -> web.Response | None:
    proxied = [m.name for m in proxy.proxied_models()]
    if model in proxied:
        return None
    return json_error(
        404, f"model: '{model}' is not a proxied model; proxied models: {', '.join(proxied) or 'none'}"
    )


def update(proxy: Proxy, body: QueueUpdateBody) -> dict[str, Any]:
    """Apply an admin update (``null`` restores a default) and describe the limits now in force."""
    given = body.model_fields_set - {"model"}
    if not given:
        raise BadRequest("body: set parallel_limit or queue_limit (or both)")
    q = proxy.queue(body.model)
    share = proxy.fleet_share(body.model)
    if "parallel_limit" in given:
        # Kept as asked: the limit in force is min(this, the fleet share), following the share.
        q.parallel_override = body.parallel_limit
    if "queue_limit" in given:
        q.queue_override = body.queue_limit
    q.notify()
    doc: dict[str, Any] = {
        "model": body.model,
        "parallel_limit": proxy.parallel_limit(body.model),
        "fleet_parallel_limit": share,
        "queue_limit": proxy.queue_limit(body.model),
        "capped": False,
    }
    if body.parallel_limit is not None and body.parallel_limit > share:
        doc["capped"] = True
        doc["requested_parallel_limit"] = body.parallel_limit
        doc["message"] = (
            f"parallel_limit {body.parallel_limit} is above this instance's fleet share for model "
            f"'{body.model}' ({share}); capped at {share}: an instance never runs more than its share"
        )
    log.info(
        "admin update of model %s: parallel_limit %s, queue_limit %s",
        body.model,
        doc["parallel_limit"],
        doc["queue_limit"],
    )
    return doc


def routes(proxy: Proxy) -> list[web.RouteDef]:
    """The queue endpoints, bound to ``proxy``."""

    async def queue_stats(request: web.Request) -> web.Response:
        model = request.query.get("model")
        if model is not None and (missing := _not_proxied(proxy, model)) is not None:
            return missing
        return json_response(stats(proxy, model))

    async def queue_memory(request: web.Request) -> web.Response:
        del request
        return json_response(memory(proxy))

    async def admin_queue_update(request: web.Request) -> web.Response:
        require_admin(request)
        body = await read_body(request, QueueUpdateBody)
        missing = _not_proxied(proxy, body.model)
        return missing if missing is not None else json_response(update(proxy, body))

    return [
        web.get("/queue/stats", queue_stats),
        web.get("/queue/memory", queue_memory),
        web.post("/admin/queue/update", admin_queue_update),
    ]
