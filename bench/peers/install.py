"""Install or build the peers from their registries into a cache outside the repo.

    python -P bench/peers/install.py [ratelimit] [litellm] [limits]

Nothing of theirs is committed: each peer is fetched by name and pinned version through its own
registry's ordinary client, into ``$FLEET_LIMITER_PEERS_CACHE`` (default
``~/.cache/fleet-limiter/peers``), and reused while the pinned version stays the same.

* envoyproxy/ratelimit: ``go install`` of its ``src/service_cmd`` at a pinned pseudo-version,
  through the Go module proxy, with the machine's Go toolchain (its go.mod has no replace
  directive, so ``go install pkg@version`` works; the build takes a few minutes on 2 cores).
* LiteLLM proxy: ``pip install litellm[proxy]==VERSION`` into a venv of its own (it pins many
  packages the project must not inherit).
* limits: ``pip install --target`` into a folder appended to ``sys.path`` by the benchmark (so the
  project's venv needs no change; ``limits`` installed in the venv is used as well if present).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RATELIMIT_MODULE = "github.com/envoyproxy/ratelimit"
#: envoyproxy/ratelimit has no tagged release for years; this is its main branch on 2026-01-22.
RATELIMIT_VERSION = "v1.4.1-0.20260122083618-3fb702589d36"
LITELLM_VERSION = "1.106.2"
LIMITS_VERSION = "5.8.0"


def cache_dir() -> Path:
    """Where peers are built and installed (never inside the repo)."""
    default = Path.home() / ".cache" / "fleet-limiter" / "peers"
    return Path(os.environ.get("FLEET_LIMITER_PEERS_CACHE", default))


def _say(message: str) -> None:
    print(f"[peers] {message}", flush=True)


def safe_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``extra``, with ``PYTHONSAFEPATH=1`` (see ``_run``)."""
    return {**os.environ, **(extra or {}), "PYTHONSAFEPATH": "1"}


def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout: float = 1800) -> None:
    """Run an install step with its output in ``log``; on failure raise with the command and its tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    # In the cache, never the repo, and with PYTHONSAFEPATH: from the repo root, a venv's `python -m
    # pip` imports the repo's operator/ instead of the standard library's `operator` and fails.
    with log.open("w") as out:
        proc = subprocess.run(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=safe_env(env),
            cwd=cache_dir(),
            timeout=timeout,
        )
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}); log {log}:\n{tail}")
    _say(f"{' '.join(cmd[:3])} ... done in {time.monotonic() - t0:.0f} s")


def ratelimit_binary() -> Path:
    return cache_dir() / f"ratelimit-{RATELIMIT_VERSION}" / "service_cmd"


def ensure_ratelimit() -> Path:
    """Build envoyproxy/ratelimit's service at the pinned version; return the binary."""
    binary = ratelimit_binary()
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("the Go toolchain is not on PATH: envoyproxy/ratelimit cannot be built")
    _say(f"building {RATELIMIT_MODULE}@{RATELIMIT_VERSION} with {go} (a few minutes on 2 cores)")
    env = {"GOBIN": str(binary.parent), "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}
    _run(
        [go, "install", f"{RATELIMIT_MODULE}/src/service_cmd@{RATELIMIT_VERSION}"],
        cache_dir() / "logs" / "ratelimit-build.log",
        env,
    )
    return binary


def litellm_venv() -> Path:
    return cache_dir() / "litellm-venv"


def ensure_litellm() -> Path:
    """Install the LiteLLM proxy into its own venv; return the ``litellm`` executable."""
    venv = litellm_venv()
    exe = venv / "bin" / "litellm"
    stamp = venv / ".installed"
    if exe.exists() and stamp.exists() and stamp.read_text().strip() == LITELLM_VERSION:
        return exe
    _say(f"installing litellm[proxy]=={LITELLM_VERSION} into {venv}")
    if not (venv / "bin" / "python").exists():
        _run([sys.executable, "-P", "-m", "venv", str(venv)], cache_dir() / "logs" / "litellm-venv.log")
    _run(
        [
            str(venv / "bin" / "python"),
            "-P",
            "-m",
            "pip",
            "install",
            "-q",
            f"litellm[proxy]=={LITELLM_VERSION}",
        ],
        cache_dir() / "logs" / "litellm-install.log",
    )
    stamp.write_text(LITELLM_VERSION + "\n")
    return exe


def limits_dir() -> Path:
    return cache_dir() / f"limits-{LIMITS_VERSION}"


def ensure_limits() -> Path:
    """Install ``limits`` (and its small dependencies) into a folder of its own; return it."""
    folder = limits_dir()
    if (folder / "limits").is_dir():
        return folder
    _say(f"installing limits=={LIMITS_VERSION} into {folder}")
    _run(
        [
            sys.executable,
            "-P",
            "-m",
            "pip",
            "install",
            "-q",
            "--target",
            str(folder),
            f"limits=={LIMITS_VERSION}",
        ],
        cache_dir() / "logs" / "limits-install.log",
    )
    return folder


def import_limits() -> str:
    """Make ``limits`` importable (the venv's copy if any, else the cached one); return its version."""
    try:
        import limits
    except ImportError:
        sys.path.append(str(ensure_limits()))
        import limits
    return str(limits.__version__)


def main(argv: list[str]) -> int:
    wanted = argv or ["limits", "litellm", "ratelimit"]
    steps = {"limits": ensure_limits, "litellm": ensure_litellm, "ratelimit": ensure_ratelimit}
    for name in wanted:
        if name not in steps:
            print(f"unknown peer {name!r}: choose from {', '.join(steps)}", file=sys.stderr)
            return 2
        _say(f"{name}: {steps[name]()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
