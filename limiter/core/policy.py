"""The RateLimitPolicy model: the single source of truth for the CRD schema, policy files,
the Redis projection and validation.

Field names on the wire are camelCase (Kubernetes conventions); Python attributes are
snake_case. Every field carries a description so ``kubectl explain`` is useful. Rules that a
JSON schema cannot express (ratios summing to 1, references between models and job types,
estimates for limited dimensions) are checked in :meth:`PolicySpec._cross_checks` and name the
field, the value and what would be valid.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from limiter.core.urls import REDIS_URL_PATTERN

API_GROUP = "fleetlimiter.io"
API_VERSION = "v1alpha1"
KIND = "RateLimitPolicy"

#: The window limits, each with the estimate field it divides and the window length in seconds.
WINDOW_LIMITS: dict[str, tuple[str, int]] = {
    "tokensPerMinute": ("tokens", 60),
    "requestsPerMinute": ("requests", 60),
    "tokensPerDay": ("tokens", 86400),
    "requestsPerDay": ("requests", 86400),
}
LIMIT_NAMES: tuple[str, ...] = (*WINDOW_LIMITS, "maxConcurrentRequests")

#: How a policy (or one model) holds work to its limits: ``enforce`` refuses and queues what does
#: not fit; ``shadow`` admits everything and counts what enforcing would have refused (docs/shadow.md).
AdmissionMode = Literal["enforce", "shadow"]
MODES: tuple[str, ...] = ("enforce", "shadow")

#: The largest limit, estimate or reported usage (2^52 = 4503599627370496): a counter plus one more
#: such amount stays an exact integer (at most 2^53) in Redis's Lua numbers, and no real model's
#: limit comes near it.
MAX_AMOUNT = 2**52
#: The largest memory estimate of one job, in KiB (1 TiB).
MAX_MEMORY_KB = 2**30


def _printable(name: str) -> str:
    if not name.isprintable() or any("\ud800" <= c <= "\udfff" for c in name):
        raise ValueError("a name must be printable text (no control characters, no lone surrogates)")
    return name


#: A model or job type name: 1 to 253 printable characters.
Name = Annotated[str, Field(min_length=1, max_length=253), AfterValidator(_printable)]


class PolicyError(ValueError):
    """A policy that cannot be used; ``problems`` holds one line per problem, each naming the field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))

    def first_line(self) -> str:
        """One line for a CLI: the first problem, and how many more there are."""
        more = len(self.problems) - 1
        return self.problems[0] + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        serialize_by_alias=True,
        # No coercion: "1" is not a ratio, 1.5 is not a limit, "true" is not a boolean.
        strict=True,
    )


class Limits(_Model):
    """The model's limits, shared by the whole fleet. Set any non-empty subset."""

    # An empty `limits: {}` is refused at apply time by the CRD too, not only by the operator.
    model_config = ConfigDict(**_Model.model_config, json_schema_extra={"minProperties": 1})

    tokens_per_minute: int | None = Field(default=None, ge=1, le=MAX_AMOUNT)
    """Tokens per UTC minute, for the whole fleet."""
    requests_per_minute: int | None = Field(default=None, ge=1, le=MAX_AMOUNT)
    """Requests per UTC minute, for the whole fleet."""
    tokens_per_day: int | None = Field(default=None, ge=1, le=MAX_AMOUNT)
    """Tokens per UTC day, for the whole fleet."""
    requests_per_day: int | None = Field(default=None, ge=1, le=MAX_AMOUNT)
    """Requests per UTC day, for the whole fleet."""
    max_concurrent_requests: int | None = Field(default=None, ge=1, le=MAX_AMOUNT)
    """Requests in flight at once, for the whole fleet."""

    def as_dict(self) -> dict[str, int]:
        """The limits that are set, by their camelCase name."""
        return {k: v for k, v in self.model_dump(by_alias=True).items() if v is not None}


class SecretKeyRef(_Model):
    """A key of a Secret in the policy's namespace."""

    name: str = Field(min_length=1)
    """The Secret's name."""
    key: str = Field(min_length=1)
    """The key inside the Secret."""


#: In a pod, the key of an upstream with ``apiKeySecretRef`` arrives in this variable + the model name.
UPSTREAM_KEY_PREFIX = "FLEET_LIMITER_UPSTREAM_KEY_"


def upstream_key_env(model: str) -> str:
    """The variable holding the key of a model whose upstream sets ``apiKeySecretRef``:
    ``FLEET_LIMITER_UPSTREAM_KEY_`` and the model name in upper case, every character other than
    A-Z and 0-9 turned into ``_`` (``gpt-4o-mini`` -> ``FLEET_LIMITER_UPSTREAM_KEY_GPT_4O_MINI``).
    The operator sets it from the Secret; the proxy reads it."""
    return UPSTREAM_KEY_PREFIX + re.sub(r"[^A-Z0-9]", "_", model.upper())


class Upstream(_Model):
    """Where the proxy forwards this model's requests."""

    url: str = Field(min_length=1, pattern=r"^https?://")
    """Base URL of the LLM server, e.g. http://ollama.llm:11434 (http or https)."""
    protocol: Literal["openai", "ollama"] = "openai"
    """Wire protocol of the upstream: openai (OpenAI-compatible) or ollama. Default openai."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret holding the upstream's API key (sent as a Bearer token; never logged)."""
    api_key_env: str | None = Field(default=None, min_length=1)
    """Name of an environment variable holding the upstream's API key (outside Kubernetes)."""
    timeout_seconds: float = Field(default=300, gt=0, le=86400)
    """How long one upstream request may take, in seconds (up to 86400). Default 300."""


class ModelSpec(_Model):
    """One model (or deployment) whose limits the fleet shares."""

    name: Name
    """The model's name, as clients send it in request bodies."""
    limits: Limits
    """The model's limits; at least one must be set."""
    upstream: Upstream | None = None
    """Where the proxy forwards requests for this model (optional)."""
    mode: AdmissionMode | None = None
    """This model's mode, overriding spec.mode: enforce or shadow. Default: spec.mode."""


class Estimate(_Model):
    """What one job of this type is expected to use; the reservation made when it starts."""

    tokens: int = Field(default=0, ge=0, le=MAX_AMOUNT)
    """Tokens one job uses (prompt plus completion). Default 0; must be positive where a model
    limits tokens."""
    requests: int = Field(default=1, ge=0, le=MAX_AMOUNT)
    """Requests one job makes. Default 1."""
    memory_kb: int = Field(default=0, ge=0, le=MAX_MEMORY_KB, alias="memoryKB")
    """Local memory one job needs, in KiB. Default 0 (no memory bound for this type)."""


class QueueSettings(_Model):
    """The job type's local wait queue on each instance."""

    max_waiting: int = Field(default=512, ge=0, le=1_000_000)
    """Jobs that may wait at once on one instance (0 to 1000000); more are refused with 503. Default 512."""
    max_wait_seconds: float = Field(default=60, ge=0, le=86400)
    """Longest wait for a slot, in seconds (0 to 86400); a request's waitSeconds is capped by it.
    Default 60."""


class JobType(_Model):
    """A kind of work with its share of every model's capacity."""

    name: Name
    """The job type's name, as job code and the X-Job-Type header send it."""
    ratio: float = Field(gt=0, le=1)
    """Share of every model's capacity, in (0, 1]. The ratios of all job types sum to exactly 1."""
    flexible: bool = True
    """Flexible types lend idle slots to, and borrow from, other flexible types. Default true."""
    estimate: Estimate = Field(default_factory=Estimate)
    """Resources one job is expected to use."""
    models: list[str] | None = Field(default=None, min_length=1)
    """Models this type may use, in order of preference. Default: all models, in policy order."""
    queue: QueueSettings = Field(default_factory=QueueSettings)
    """Local wait queue settings."""

    @property
    def exact_ratio(self) -> Fraction:
        """The ratio as an exact rational: 0.29 is 29/100, never 0.28999..."""
        return Fraction(repr(self.ratio))


class InstanceSettings(_Model):
    """Settings for each limiter instance (pod)."""

    memory_budget_mb: int | None = Field(default=None, ge=1, le=2**30, alias="memoryBudgetMB")
    """Local memory budget per instance in MiB (1 MB = 1024 KB). LOCAL: never divided by the instance
    count. Default: 80% of the container's memory limit when job types declare memory estimates."""
    heartbeat_seconds: float = Field(default=1, ge=0.05, le=60)
    """Heartbeat interval in seconds (0.05 to 60). Default 1."""
    instance_timeout_seconds: float = Field(default=5, ge=0.1, le=600)
    """An instance silent this long (Redis time) is removed, in seconds (0.1 to 600). Default 5."""
    lease_timeout_seconds: float = Field(default=600, ge=1, le=604800)
    """A lease not released this long after it was granted expires and its slot returns, in
    seconds (1 to 604800, a week). Default 600 (10 minutes)."""

    @model_validator(mode="after")
    def _timeout_after_heartbeat(self) -> InstanceSettings:
        if self.instance_timeout_seconds <= self.heartbeat_seconds:
            raise ValueError(
                f"spec.instance.instanceTimeoutSeconds: {self.instance_timeout_seconds:g} must be greater "
                f"than heartbeatSeconds ({self.heartbeat_seconds:g}), or live instances get evicted"
            )
        return self


class FleetSettings(_Model):
    """The fleet of limiter pods the operator runs."""

    replicas: int = Field(default=1, ge=0, le=1000)
    """Limiter pods to run. Default 1."""


class RedisSettings(_Model):
    """Where the fleet keeps its shared state."""

    url: str | None = Field(default=None, pattern=REDIS_URL_PATTERN)
    """Redis URL, e.g. redis://redis:6379/0."""
    secret_ref: SecretKeyRef | None = None
    """A Secret key holding the Redis URL (takes precedence over url)."""


class CreditSettings(_Model):
    """Credit budgets per API key, charged by the LLM proxy."""

    enforce: bool = False
    """The proxy requires ``Authorization: Bearer <key>`` with a credit budget (``PUT /api/keys/{key}``),
    reserves the request's estimate before forwarding (429 when it does not fit) and charges what the
    answer used. Default false."""
    unit: Literal["tokens", "requests"] = "tokens"
    """What one credit pays for: ``tokens`` (default) or ``requests``."""
    reservation_seconds: int = Field(default=600, ge=1, le=86400)
    """How long a request's reservation holds before its credits return by themselves (a proxy that
    died mid-request), in seconds. Keep it above the upstreams' ``timeoutSeconds``. Default 600."""


class PolicySpec(_Model):
    """The spec of a RateLimitPolicy: models with their limits and the job types that share them."""

    models: list[ModelSpec] = Field(min_length=1)
    """The models whose limits the fleet shares, in default order of preference."""
    job_types: list[JobType] = Field(min_length=1)
    """The kinds of work and their shares."""
    default_job_type: str | None = None
    """The job type used when a request names none. Default: the first job type."""
    instance: InstanceSettings = Field(default_factory=InstanceSettings)
    """Per-instance settings."""
    fleet: FleetSettings = Field(default_factory=FleetSettings)
    """The fleet the operator runs."""
    redis: RedisSettings | None = None
    """Redis to use; default: the operator's."""
    credits: CreditSettings | None = None
    """Credit budgets per API key for the LLM proxy; default: not enforced."""
    mode: AdmissionMode = "enforce"
    """enforce (default): work that does not fit the limits waits or is refused. shadow: everything
    is admitted, and what enforcing would have refused is counted (metrics, top, status.shadow).
    A model's own mode overrides it."""

    # -- derived views -------------------------------------------------------------------------

    def model(self, name: str) -> ModelSpec:
        """The model called ``name`` (KeyError if none)."""
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def job_type(self, name: str) -> JobType:
        """The job type called ``name`` (KeyError if none)."""
        for j in self.job_types:
            if j.name == name:
                return j
        raise KeyError(name)

    def models_of(self, job: JobType) -> list[str]:
        """The models ``job`` may use, in its order of preference."""
        return list(job.models) if job.models is not None else [m.name for m in self.models]

    def mode_of(self, model: str) -> AdmissionMode:
        """The mode in force for ``model``: its own ``mode``, else the policy's."""
        for m in self.models:
            if m.name == model:
                return m.mode or self.mode
        return self.mode

    def shadow_models(self) -> frozenset[str]:
        """The models whose mode in force is ``shadow``."""
        return frozenset(m.name for m in self.models if (m.mode or self.mode) == "shadow")

    @property
    def default_job_type_name(self) -> str:
        """The job type a request without one gets."""
        return self.default_job_type or self.job_types[0].name

    # -- cross-field rules -----------------------------------------------------------------------

    @model_validator(mode="after")
    def _cross_checks(self) -> PolicySpec:
        problems: list[str] = []
        model_names = [m.name for m in self.models]
        job_names = [j.name for j in self.job_types]
        problems += _duplicates("spec.models", model_names)
        problems += _duplicates("spec.jobTypes", job_names)

        for i, m in enumerate(self.models):
            if not m.limits.as_dict():
                problems.append(
                    f"spec.models[{i}].limits: model '{m.name}' sets no limit; set at least one of "
                    + ", ".join(LIMIT_NAMES)
                )

        total = sum((j.exact_ratio for j in self.job_types), Fraction(0))
        if total != 1:
            # Exact decimals: 1e-30 + 1 is 1.000...001, never "1".
            with localcontext(prec=1000):
                shown = sum((Decimal(repr(j.ratio)) for j in self.job_types), Decimal(0))
            ratios = " + ".join(repr(j.ratio) for j in self.job_types)
            problems.append(
                f"spec.jobTypes[*].ratio: ratios sum to {shown:f} ({ratios}); they must sum to exactly 1"
            )

        known = set(model_names)
        for i, j in enumerate(self.job_types):
            allowed = j.models or []
            problems += _duplicates(f"spec.jobTypes[{i}].models", allowed)
            for k, name in enumerate(allowed):
                if name not in known:
                    problems.append(
                        f"spec.jobTypes[{i}].models[{k}]: unknown model '{name}' in job type '{j.name}'; "
                        f"known models: {', '.join(model_names)}"
                    )
            for name in self.models_of(j):
                if name not in known:
                    continue
                limits = self.model(name).limits.as_dict()
                for limit, (field, _) in WINDOW_LIMITS.items():
                    if limit in limits and getattr(j.estimate, field) <= 0:
                        problems.append(
                            f"spec.jobTypes[{i}].estimate.{field}: job type '{j.name}' estimates "
                            f"{getattr(j.estimate, field)} {field} but may use model '{name}', which "
                            f"limits {limit}; set a positive estimate.{field}"
                        )

        if self.default_job_type is not None and self.default_job_type not in job_names:
            problems.append(
                f"spec.defaultJobType: unknown job type '{self.default_job_type}'; "
                f"known job types: {', '.join(job_names)}"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _duplicates(path: str, names: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for i, n in enumerate(names):
        if n in seen:
            out.append(f"{path}[{i}].name: duplicate name '{n}'; names must be unique")
        seen.add(n)
    return out


class ObjectMeta(BaseModel):
    """The metadata a policy file may carry (the rest of Kubernetes metadata is ignored)."""

    model_config = ConfigDict(extra="allow")
    name: str = "default"
    namespace: str = "default"


class RateLimitPolicy(_Model):
    """A full RateLimitPolicy manifest."""

    api_version: str = f"{API_GROUP}/{API_VERSION}"
    kind: Literal["RateLimitPolicy"] = "RateLimitPolicy"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: PolicySpec
    status: dict[str, Any] | None = None


# -- loading -----------------------------------------------------------------------------------


def format_validation_error(exc: ValidationError, prefix: str = "spec") -> list[str]:
    """Turn pydantic's errors into one line per problem, each naming the field and the value."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        msg = err["msg"]
        if err["type"] == "value_error":
            # Our own cross-field rules: already rooted at "spec." and naming the value.
            msg = msg.removeprefix("Value error, ")
            if msg.startswith("spec."):
                lines.extend(msg.splitlines())
                continue
        path = prefix
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        path = path.removeprefix(".") or "policy"
        if err["type"] == "extra_forbidden":
            lines.append(
                f"{path}: unknown field; remove it (check the spelling against the policy reference)"
            )
        elif err["type"] == "missing":
            lines.append(f"{path}: required field is missing")
        else:
            if path.endswith(".ratio") and err["type"] in ("greater_than", "less_than_equal"):
                msg = "a ratio must be greater than 0 and at most 1"
            shown = err.get("input")
            if isinstance(shown, str | int | float | bool) or shown is None:
                lines.append(f"{path}: {json.dumps(shown)} is not valid: {msg[:1].lower()}{msg[1:]}")
            else:
                lines.append(f"{path}: {msg[:1].lower()}{msg[1:]}")
    return lines


def parse_policy(data: Any) -> tuple[PolicySpec, ObjectMeta]:
    """Validate a full manifest or a bare spec (already decoded). Raises :class:`PolicyError`."""
    if not isinstance(data, dict):
        raise PolicyError(["policy: expected a mapping (a RateLimitPolicy manifest or its spec)"])
    if "spec" in data or "kind" in data:
        if data.get("kind", KIND) != KIND:
            raise PolicyError([f"kind: {json.dumps(data.get('kind'))} is not valid: expected {KIND}"])
        try:
            manifest = RateLimitPolicy.model_validate(data)
        except ValidationError as exc:
            raise PolicyError(format_validation_error(exc, prefix="")) from None
        return manifest.spec, manifest.metadata
    try:
        return PolicySpec.model_validate(data), ObjectMeta()
    except ValidationError as exc:
        raise PolicyError(format_validation_error(exc)) from None


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, reading ``1e5`` and ``1e-05`` as numbers (as JSON and YAML 1.2 do; YAML
    1.1 wants a dot in the mantissa, so they would be strings, and a string is never a number here)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def loads_policy(text: str, source: str = "policy") -> tuple[PolicySpec, ObjectMeta]:
    """Parse YAML or JSON text (JSON is YAML) into a validated policy."""
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PolicyError([f"{source}: not valid YAML or JSON{where}: {problem}"]) from None
    except RecursionError:
        raise PolicyError([f"{source}: nested too deeply (a policy is a few levels deep)"]) from None
    try:
        return parse_policy(data)
    except RecursionError:
        raise PolicyError([f"{source}: nested too deeply (a policy is a few levels deep)"]) from None


def load_policy(path: str | Path) -> tuple[PolicySpec, ObjectMeta]:
    """Read and validate a policy file (a RateLimitPolicy manifest or a bare spec, YAML or JSON)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([f"{p}: no such policy file"]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise PolicyError([f"{p}: cannot read the policy file: {exc.__class__.__name__}"]) from None
    return loads_policy(text, source=str(p))
