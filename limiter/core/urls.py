"""Redis URLs: the one check of their scheme (the CLI, the policy, the operator), and redaction."""

from __future__ import annotations

import re

#: Schemes a Redis URL may have (``--redis``, ``spec.redis.url``, the operator's default).
REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")
#: The same check as a JSON-schema pattern (the policy model, hence the CRD).
REDIS_URL_PATTERN = r"^(redis|rediss|unix)://"


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL (without its password), or None when it is one."""
    if url.startswith(REDIS_URL_SCHEMES):
        return None
    return f"{redact(url)!r} is not valid: expected redis://, rediss:// or unix://"
