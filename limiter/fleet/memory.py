"""Memory as the container sees it: cgroup v2 (or v1) limits in a pod, the host otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_V1 = Path("/sys/fs/cgroup/memory")
#: Share of the container's memory limit a running instance budgets for jobs, when the policy sets
#: no memoryBudgetMB (SPEC section 3).
DEFAULT_BUDGET_SHARE = 0.8


@dataclass(frozen=True, slots=True)
class MemoryInfo:
    """Total and used bytes, and where they come from (``cgroup`` or ``host``)."""

    total: int
    used: int
    source: str

    @property
    def available(self) -> int:
        return max(0, self.total - self.used)


def _read_int(path: Path) -> int | None:
    try:
        raw = path.read_text().strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None


def _host() -> MemoryInfo:
    fields: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            fields[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return MemoryInfo(0, 0, "unknown")
    total = fields.get("MemTotal", 0)
    return MemoryInfo(total, total - fields.get("MemAvailable", total), "host")


def read_memory(root_v2: Path = CGROUP_V2, root_v1: Path = CGROUP_V1) -> MemoryInfo:
    """The container's limit and usage where a cgroup sets a limit, else the host's memory."""
    host = _host()
    limit = None
    used = None
    if (root_v2 / "memory.max").exists():
        limit = _read_int(root_v2 / "memory.max")  # "max" (no limit) reads as None
        used = _read_int(root_v2 / "memory.current")
    elif (root_v1 / "memory.limit_in_bytes").exists():
        limit = _read_int(root_v1 / "memory.limit_in_bytes")
        used = _read_int(root_v1 / "memory.usage_in_bytes")
    if limit is not None and 0 < limit < (host.total or limit + 1):
        return MemoryInfo(limit, used or 0, "cgroup")
    return host


def default_budget_kb(info: MemoryInfo | None = None) -> int | None:
    """80% of the container's memory limit in KiB; None outside a memory-limited container."""
    info = info or read_memory()
    if info.source != "cgroup":
        return None
    return int(info.total * DEFAULT_BUDGET_SHARE) // 1024
