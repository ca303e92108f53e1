"""The LLM proxy (SPEC section 6): OpenAI-compatible and Ollama endpoints in front of each model's
``upstream``, held to the model's share of the fleet's limits.

Every request takes a lease of its job type (header ``X-Job-Type``, else the policy's
``defaultJobType``) on its model (from the JSON body) *before* it is forwarded, waiting in the
model's bounded queue if it must; the lease is settled with the usage the answer reports. Per
model, on this instance:

* ``parallel_limit``: the instance's slots on the model summed over job types (it follows the
  allocation live), or less where an admin lowered it with ``POST /admin/queue/update``;
* ``queue_limit``: requests that may wait; by default the sum of ``queue.maxWaiting`` over the job
  types that may use the model (each job type's own queue stays bounded by its ``maxWaiting``).

:mod:`limiter.proxy.queue_api` reports it (``/queue/stats``, ``/queue/memory``, ``/health``'s
``concurrency``) and takes admin updates; the ``fleet_limiter_proxy_*`` metrics show it to
Prometheus. docs/proxy.md is the user's guide.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from typing import Any

import aiohttp
from aiohttp import web

from limiter.core.admission import AdmissionError, NoCapacity, Ticket, UnknownLease
from limiter.core.budgets import clamp_usage
from limiter.core.policy import ModelSpec, PolicySpec
from limiter.core.refusals import Limit, Refusal, RefusalReason
from limiter.core.shadow import PARALLEL_LIMIT, QUEUE_FULL
from limiter.fleet.instance import LimiterInstance
from limiter.proxy.keycharge import ChargeRefused, KeyCharge
from limiter.proxy.queues import ModelQueue
from limiter.proxy.upstream import UpstreamKeyMissing, api_key, error_response, forward
from limiter.proxy.wire import Route, body_problem, estimate_tokens, wants_stream, with_stream_usage
from limiter.redis.creditstore import CreditStore
from limiter.web.leases import model_rate_limit_headers
from limiter.web.toolkit import BadRequest, SlowBody, parse_json_object, read_raw

log = logging.getLogger("fleet_limiter.proxy")

#: Largest request body the proxy accepts, in bytes (long prompts and images are big; 413 beyond).
MAX_PROXY_BODY_BYTES = 8 << 20
JOB_TYPE_HEADER = "X-Job-Type"
#: A lease given back before its request reached the upstream used nothing.
NOTHING_USED = {"tokens": 0, "requests": 0}
#: Retry-After for a full queue is the time the queue ahead should take to drain, within these
#: bounds in seconds.
RETRY_AFTER_MIN, RETRY_AFTER_MAX = 1, 60


#: Outcomes a credit key pays for: the upstream answered, or may have generated tokens.
BILLABLE_OUTCOMES = frozenset({"ok", "timeout", "client_gone"})


class Proxy:
    """The proxy's state on one instance: the upstream client session and the model queues.

    ``credits``: the instance's credit store, charged where the policy enforces credit budgets."""

    def __init__(self, instance: LimiterInstance, credits: CreditStore | None = None) -> None:
        self.instance = instance
        self.credits = credits
        self.queues: dict[str, ModelQueue] = {}
        self.session: aiohttp.ClientSession | None = None
        self._settling: set[asyncio.Task[Any]] = set()

    # -- life cycle ----------------------------------------------------------------------------------

    async def start(self, app: web.Application) -> None:
        """One client session for every upstream (connections are pooled per host)."""
        del app
        # No connection cap of the client's own: admission already bounds what is in flight.
        connector = aiohttp.TCPConnector(limit=0)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))

    async def close(self, app: web.Application) -> None:
        """Close the client session (on the app's cleanup)."""
        del app
        if self.session is not None:
            await self.session.close()
            self.session = None

    # -- limits --------------------------------------------------------------------------------------

    def queue(self, model: str) -> ModelQueue:
        """The model's queue (created on first use: policies may add models live)."""
        q = self.queues.get(model)
        if q is None:
            q = self.queues[model] = ModelQueue(model)
        return q

    def proxied_models(self) -> list[ModelSpec]:
        """The policy's models with an upstream, in policy order."""
        spec = self.instance.spec
        return [m for m in spec.models if m.upstream is not None] if spec is not None else []

    def fleet_share(self, model: str) -> int:
        """This instance's slots on ``model``, summed over job types (the allocation in force)."""
        manager = self.instance.manager
        if manager is None:
            return 0
        return sum(n for (_, m), n in manager.slots.items() if m == model)

    def default_queue_limit(self, model: str) -> int:
        """``queue.maxWaiting`` summed over the job types that may use ``model``."""
        spec = self.instance.spec
        if spec is None:
            return 0
        return sum(j.queue.max_waiting for j in spec.job_types if model in spec.models_of(j))

    def parallel_limit(self, model: str) -> int:
        """The model's parallel limit in force on this instance."""
        return self.queue(model).parallel_limit(self.fleet_share(model))

    def queue_limit(self, model: str) -> int:
        """The model's queue bound in force on this instance."""
        return self.queue(model).queue_limit(self.default_queue_limit(model))

    def defaults(self) -> tuple[int, int]:
        """``default_parallel`` and ``default_queue_limit``: the fleet-share parallel limit and the
        default queue limit of the most constrained proxied model (0 without any)."""
        models = [m.name for m in self.proxied_models()]
        if not models:
            return 0, 0
        return min(self.fleet_share(m) for m in models), min(self.default_queue_limit(m) for m in models)

    def retry_after(self, q: ModelQueue) -> int:
        """Seconds until the queue ahead should have drained, from the mean processing time."""
        per_request = q.processing.total / q.processing.count if q.processing.count else 1.0
        rounds = (q.queued + 1) / max(1, self.parallel_limit(q.model))
        return int(min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, math.ceil(per_request * rounds))))

    # -- admission -----------------------------------------------------------------------------------

    async def admit(self, q: ModelQueue, job_type: str, estimate: dict[str, int]) -> Ticket:
        """A place through ``q``'s gate, then a lease on its model; raises :class:`NoCapacity`.

        A request waits first at the gate (``parallel_limit``), holding nothing, then for its lease
        (immediate unless the job type's slots or the window budget are taken), so no waiting
        request holds a lease or a reservation. A request that would have to wait while the
        model's queue is full (``queue_limit``) is refused at once. On success the caller holds a
        place through the gate (``q.leave()`` when done) and the lease.

        A model in shadow mode refuses nothing: where the queue is full or the wait at the gate
        ends, the request goes through the gate beyond ``parallel_limit`` and is counted in the
        instance's shadow counts (docs/shadow.md).
        """
        inst = self.instance
        loop = asyncio.get_running_loop()
        spec = inst.spec
        max_wait = spec.job_type(job_type).queue.max_wait_seconds if spec is not None else 0.0
        deadline = loop.time() + max_wait

        def limit() -> int:
            return self.parallel_limit(q.model)

        shadow = spec is not None and spec.mode_of(q.model) == "shadow"
        would_refuse: str | None = None
        try:
            if not q.can_enter(limit()):
                if shadow and q.queued >= self.queue_limit(q.model):
                    would_refuse = QUEUE_FULL
                else:
                    self._refuse_if_full(q)
                    q.queued += 1
                    try:
                        passed = await q.pass_gate(limit, max_wait)
                    finally:
                        q.queued -= 1
                    if not passed and not shadow:
                        refusal = Refusal(
                            RefusalReason.PARALLEL_LIMIT,
                            Limit("parallel_limit", model=q.model, value=limit()),
                            retry_after=self.retry_after(q),
                        )
                        raise NoCapacity(
                            f"no free slot within {max_wait:g} s: {refusal.message()}",
                            refusal=refusal,
                        )
                    would_refuse = None if passed else PARALLEL_LIMIT
                if would_refuse is not None:
                    q.active += 1  # shadow: through the gate beyond parallel_limit
            else:
                await q.pass_gate(limit, 0.0)  # enters at once: nothing awaited since can_enter
            wait = 0.0 if would_refuse else max(0.0, deadline - loop.time())
            try:
                return await self._lease(q, job_type, estimate, wait, would_refuse)
            except BaseException:
                q.leave()
                raise
        except NoCapacity as exc:
            q.rejected += 1
            q.refusals[str(exc.reason)] += 1
            q.outcomes["rejected"] += 1
            raise
        except asyncio.CancelledError:
            q.outcomes["cancelled"] += 1  # the client went away while queued
            raise

    def _refuse_if_full(self, q: ModelQueue) -> None:
        bound = self.queue_limit(q.model)
        if q.queued >= bound:
            drain = self.retry_after(q)
            refusal = Refusal(
                RefusalReason.QUEUE_FULL,
                Limit("queue_limit", model=q.model, value=bound),
                retry_after=drain,
                position=q.queued + 1,
                estimated_start=drain,
            )
            raise NoCapacity(refusal.message(), refusal=refusal)

    async def _lease(
        self, q: ModelQueue, job_type: str, estimate: dict[str, int], wait: float, would_refuse: str | None
    ) -> Ticket:
        """The lease of a request through the gate (``would_refuse``: shadow mode let it through
        although enforcing would have refused it, for that reason)."""
        if q.queued >= self.queue_limit(q.model):
            wait = 0.0  # the queue is full: take a free slot now, or be refused, but never wait
        try:
            return await self.instance.acquire(
                job_type, [q.model], estimate, wait, shadow_reason=would_refuse
            )
        except AdmissionError as exc:
            if exc.status != 503:
                raise
            raise NoCapacity(f"model '{q.model}': {exc.message}", exc.retry_after, exc.refusal) from None

    async def settle(self, ticket: Ticket, actual: dict[str, int] | None) -> None:
        """Release a lease with its actual usage, even from a cancelled handler (shielded)."""
        task = asyncio.ensure_future(self._release(ticket, actual))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    async def _release(self, ticket: Ticket, actual: dict[str, int] | None) -> None:
        spec = self.instance.spec
        if actual and spec is not None and ticket.model is not None:
            # An upstream's usage is charged up to what one job can use (core.budgets.usage_bounds).
            with contextlib.suppress(KeyError):
                actual = clamp_usage(spec.model(ticket.model), actual)
        try:
            await self.instance.release(ticket.id, actual)
        except UnknownLease:
            log.warning("lease %s of model %s had expired before its request ended", ticket.id, ticket.model)

    # -- the proxied request -------------------------------------------------------------------------

    async def handle(self, request: web.Request, route: Route) -> web.StreamResponse:
        """One proxied request, from body to settled lease."""
        try:
            raw = await read_raw(request, MAX_PROXY_BODY_BYTES)
        except SlowBody as exc:
            return error_response(route.api, 408, str(exc), {"Connection": "close"})
        if raw is None:
            return error_response(route.api, 413, f"body: larger than {MAX_PROXY_BODY_BYTES} bytes")
        body = parse_json_object(raw, required="a JSON object with a 'model' is required")
        spec = self.instance.spec
        if spec is None or self.session is None:
            refusal = Refusal(
                RefusalReason.NOT_READY,
                Limit("instance"),
                retry_after=1.0,
                detail="it has not joined the fleet yet",
            )
            return error_response(route.api, 503, refusal.message(), refusal.headers(), **refusal.to_json())
        model = self._model(spec, body, route)
        job_type = self._job_type(spec, request, model)
        if problem := body_problem(route, body):
            raise BadRequest(problem)
        try:
            key = api_key(model)
        except UpstreamKeyMissing as exc:
            message = f"model '{model.name}': the upstream's API key variable {exc.variable} is not set"
            return error_response(route.api, 502, message)
        stream = wants_stream(route, body)
        payload, strip_usage = raw, False
        if stream and route.asks_stream_usage:
            rewritten, asked = with_stream_usage(body)
            if not asked:
                payload, strip_usage = json.dumps(rewritten).encode(), True
        try:
            tokens = self._estimate(spec, model, job_type, route, body)
        except RecursionError:
            raise BadRequest("body: nested too deeply") from None
        charge = None
        if spec.credits is not None and spec.credits.enforce:
            if self.credits is None:
                refusal = Refusal(
                    RefusalReason.NOT_READY,
                    Limit("credits"),
                    retry_after=1.0,
                    detail="credit budgets are not available on this instance",
                )
                return error_response(
                    route.api, 503, refusal.message(), refusal.headers(), **refusal.to_json()
                )
            try:
                charge = await KeyCharge.reserve(self.credits, request, spec.credits, tokens)
            except ChargeRefused as exc:
                return error_response(route.api, exc.status, exc.message, exc.headers, **exc.extra)

        q = self.queue(model.name)
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        try:
            ticket = await self.admit(q, job_type, {"tokens": tokens, "requests": 1})
        except NoCapacity as exc:
            if charge is not None:
                await charge.release()
            refusal = exc.refusal or Refusal(
                RefusalReason.PARALLEL_LIMIT, Limit("parallel_limit", model=model.name), exc.retry_after
            )
            return error_response(
                route.api, 503, exc.message, refusal.headers(), model=model.name, **refusal.to_json()
            )
        except BaseException:
            if charge is not None:
                await charge.release()
            raise
        started = loop.time()
        q.wait.observe(started - arrived)
        q.tokens["estimated"] += tokens
        outcome, actual = "client_gone", None
        try:
            result = await forward(
                self.session,
                request,
                route,
                model,
                payload,
                key=key,
                stream=stream,
                strip_usage=strip_usage,
                extra_headers=model_rate_limit_headers(self.instance, model.name),
            )
            outcome, actual = result.outcome, result.actual()
            return result.response
        finally:
            q.leave()
            q.processed += 1
            q.outcomes[outcome] += 1
            q.processing.observe(loop.time() - started)
            if actual is not None:
                q.tokens["actual"] += actual.get("tokens", tokens)
            await self.settle(ticket, actual)
            if charge is not None:
                await charge.settle(
                    actual.get("tokens") if actual is not None else None,
                    billable=outcome in BILLABLE_OUTCOMES,
                )

    def _model(self, spec: PolicySpec, body: dict[str, Any], route: Route) -> ModelSpec:
        proxied = ", ".join(m.name for m in self.proxied_models()) or "none"
        name = body.get("model")
        if name is None:
            raise BadRequest(f"model: required field is missing; proxied models: {proxied}")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"model: {json.dumps(name)} is not valid: expected a model name (a string)")
        try:
            model = spec.model(name)
        except KeyError:
            raise NotFound(f"model: unknown model '{name}'; proxied models: {proxied}") from None
        if model.upstream is None:
            raise NotFound(
                f"model: model '{name}' has no upstream in the policy (spec.models[].upstream), so the "
                f"proxy cannot forward it; proxied models: {proxied}"
            )
        if route.api == "ollama" and model.upstream.protocol != "ollama":
            raise BadRequest(
                f"model: model '{name}' has an openai upstream, which does not speak the Ollama API "
                f"{route.path}; use /v1/chat/completions, /v1/completions or /v1/embeddings"
            )
        return model

    def _job_type(self, spec: PolicySpec, request: web.Request, model: ModelSpec) -> str:
        name = request.headers.get(JOB_TYPE_HEADER, "").strip() or spec.default_job_type_name
        try:
            job = spec.job_type(name)
        except KeyError:
            known = ", ".join(j.name for j in spec.job_types)
            raise NotFound(
                f"{JOB_TYPE_HEADER}: unknown job type '{name}'; known job types: {known}"
            ) from None
        allowed = spec.models_of(job)
        if model.name not in allowed:
            raise BadRequest(
                f"{JOB_TYPE_HEADER}: job type '{name}' may not use model '{model.name}'; "
                f"it may use: {', '.join(allowed)}"
            )
        return name

    @staticmethod
    def _estimate(
        spec: PolicySpec, model: ModelSpec, job_type: str, route: Route, body: dict[str, Any]
    ) -> int:
        tokens = estimate_tokens(route, body, spec.job_type(job_type).estimate.tokens)
        # A reservation larger than a window's whole limit could never be granted: cap it there.
        limits = model.limits.as_dict()
        caps = [limits[k] for k in ("tokensPerMinute", "tokensPerDay") if k in limits]
        return min([tokens, *caps])


class NotFound(BadRequest):
    """A 404 naming the field (an unknown model or job type)."""
