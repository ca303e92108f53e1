"""The OpenAPI document: checked in and current, served by a real instance, valid OpenAPI 3.1, and
a bounded schemathesis run against a live instance finds no 5xx on any route (issue: never over-admit,
bounded inputs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.support.fleet import Fleet
from tests.support.http import http

ROOT = Path(__file__).parents[2]
ADMIN = "openapi-tests-admin-token"


def test_checked_in_document_is_current() -> None:
    out = subprocess.run(
        [sys.executable, "-P", "tools/gen_openapi.py", "--check"], cwd=ROOT, capture_output=True, timeout=60
    )
    assert out.returncode == 0, "docs/openapi.json is stale: run `make docs`"


@pytest.mark.timeout(240)
def test_served_document_and_schemathesis_find_no_server_error(
    fleet: Fleet, llm: FakeLLMServer, tmp_path: Path
) -> None:
    fleet.write_policy(
        "openapi",
        {
            "models": [
                {"name": "m", "limits": {"tokensPerMinute": 1000000, "maxConcurrentRequests": 20}},
                {"name": "proxied", "limits": {"maxConcurrentRequests": 4}, "upstream": {"url": llm.url}},
            ],
            "jobTypes": [
                {"name": "a", "ratio": 1, "estimate": {"tokens": 100}, "queue": {"maxWaitSeconds": 1}}
            ],
        },
    )
    (inst,) = fleet.start(1, env={"FLEET_LIMITER_ADMIN_TOKEN": ADMIN})
    status, served, _ = http("GET", inst.url + "/openapi.json")
    assert status == 200 and served == json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert served["openapi"] == "3.1.0" and "/api/jobs/acquire" in served["paths"]
    st = Path(sys.executable).with_name("st")
    # 503 is an answer here (no capacity now, with Retry-After); any other 5xx is a failure.
    config = tmp_path / "schemathesis.toml"
    config.write_text('[checks.not_a_server_error]\nexpected-statuses = ["2xx", "3xx", "4xx", "503"]\n')
    out = subprocess.run(
        [
            str(st), "--config-file", str(config), "run", inst.url + "/openapi.json",
            "--checks", "not_a_server_error",
            "--max-examples", "15",
            "--seed", "1",
            "--request-timeout", "10",
            "--header", f"Authorization: Bearer {ADMIN}",
            "--no-color",
        ],
        capture_output=True, text=True, timeout=220, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "Traceback" not in inst.log()
