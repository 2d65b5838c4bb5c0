"""schemathesis against the running service: every operation, bounded cases, no 5xx, schema kept.

A real service process with fake llama-server children (real spawns would make
each generated start take seconds). Generated starts are bounded by the cap (2),
generated registrations cannot name an existing GGUF file nor pass unsafe flags
(api_limits), and everything is stopped and checked gone at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
from service_proc import start_service
from test_cli import fake_config

MAX_EXAMPLES = 40  # per operation and phase; the test prints the resulting case count
# Below pytest's own timeout (pyproject: 300 s), with room for the service's start and
# stop, so a slow run fails here with schemathesis's output rather than in pytest-timeout.
RUN_LIMIT = 200  # seconds; a run takes about 45 s on a quiet 2-core machine
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance"
)


def _children_of(tmp_path: Path) -> list[psutil.Process]:
    """Processes whose command line mentions this test's folder (the fake llama-servers)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(tmp_path) in cmdline and "fake" in cmdline:
            found.append(proc)
    return found


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(
    tmp_path: Path, fake_server_bin: Path
) -> None:
    config = fake_config(tmp_path, fake_server_bin, models=2)
    config["max_parallel"] = 2
    for model in config["models"]:
        model["args"] = ["--embeddings"]  # else /v1/embeddings passes on llama-server's 501
    service = start_service(tmp_path / "svc", config)
    report = tmp_path / "schemathesis.json"
    st = Path(sys.executable).with_name("st")
    argv = [
        str(st),
        "run",
        f"{service.api}/openapi.json",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "1",
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=tmp_path,  # it keeps a crash cache in .schemathesis/ under the working folder
            timeout=RUN_LIMIT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout or ""
        if isinstance(partial, bytes):
            partial = partial.decode(errors="replace")
        raise AssertionError(
            f"schemathesis ran over {RUN_LIMIT} s; its output so far:\n{partial[-6000:]}"
        ) from None
    finally:
        assert service.stop() == 0
    output = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, output
    summary = json.loads(report.read_text())
    cases = summary["test_cases"]
    operations = summary["operations"]
    print(
        f"schemathesis: {cases['generated']} cases over {operations['tested']} operations, "
        f"{cases['with_failures']} with failures"
    )
    assert operations["tested"] == operations["total"] >= 12
    assert cases["with_failures"] == 0 and cases["errored"] == 0, output
    assert cases["generated"] >= 200
    # error_middleware logs every exception a handler let escape (it answers 500).
    assert "unhandled error" not in service.log(), service.log()[-4000:]
    assert _children_of(tmp_path) == []
