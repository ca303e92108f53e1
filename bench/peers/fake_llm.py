"""The stand-in LLM server (tests/fakes/llm_server.py) as a process: prints its URL, serves until
its standard input closes. Answers at once (no simulated latency), so a gateway's overhead is what
the measurement shows."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fakes.llm_server import FakeLLMServer


def main() -> int:
    with FakeLLMServer() as server:
        print(server.url, flush=True)
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
