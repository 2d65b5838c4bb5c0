"""The set-up scripts leave the user's processes and the machine's policy-rc.d as they were."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
WITHOUT_DAEMONS = ROOT / "scripts" / "without_daemons.sh"
MARKER = "# written by llama-exporter scripts/without_daemons.sh"

# Ending processes by name hits whatever else on the machine has that name.
KILL_BY_NAME = re.compile(r"\b(pkill|killall)\b|pgrep[^\n]*\|\s*xargs\s+kill")


def project_files() -> list[Path]:
    """Scripts, CI, benchmarks and tests: everything that starts or ends processes."""
    files = [*ROOT.glob("scripts/*"), *ROOT.glob(".ci/*"), *ROOT.glob("bench/*.py")]
    files += [p for p in ROOT.glob("tests/*.py") if p.name != Path(__file__).name]
    return sorted(p for p in files if p.is_file())


def test_nothing_kills_processes_by_name() -> None:
    files = project_files()
    assert any(p.name == "bootstrap.sh" for p in files)
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if KILL_BY_NAME.search(line)
    ]
    assert offenders == []


def test_the_pattern_catches_kill_by_name() -> None:
    for line in ["pkill -x prometheus || true", "killall prometheus", "pgrep x | xargs kill"]:
        assert KILL_BY_NAME.search(line), line
    assert not KILL_BY_NAME.search("os.kill(pid, signal.SIGKILL)  # by pid")


def test_bootstrap_installs_the_packages_through_without_daemons() -> None:
    text = (ROOT / "scripts" / "bootstrap.sh").read_text()
    install = [line for line in text.splitlines() if "apt-get install" in line]
    assert install, "bootstrap.sh no longer installs packages?"
    for i, line in enumerate(text.splitlines()):
        if "apt-get install" in line:
            before = text.splitlines()[i - 1]
            assert "without_daemons.sh" in line + before, line


def run(policy: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """without_daemons.sh COMMAND with the policy file at policy."""
    env = {**os.environ, "LLAMA_EXPORTER_POLICY_RC_D": str(policy)}
    return subprocess.run(
        [str(WITHOUT_DAEMONS), *command], env=env, capture_output=True, text=True, timeout=60
    )


def policy_check(policy: Path) -> str:
    """A shell command that prints the exit status of the policy in force (as invoke-rc.d asks)."""
    return f'"{policy}" prometheus start; echo "policy=$?"'


def test_policy_forbids_starts_during_the_command_and_is_removed_after(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    result = run(policy, "sh", "-c", policy_check(policy))
    assert result.returncode == 0, result.stderr
    assert "policy=101" in result.stdout
    assert not policy.exists()
    assert list(tmp_path.iterdir()) == []


def test_an_existing_policy_is_put_back_byte_for_byte(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    original = b"#!/bin/sh\n# the machine's own policy\nexit 0\n"
    policy.write_bytes(original)
    policy.chmod(0o750)
    result = run(policy, "sh", "-c", policy_check(policy))
    assert "policy=101" in result.stdout, result.stderr
    assert policy.read_bytes() == original
    assert policy.stat().st_mode & 0o777 == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy-rc.d"]


@pytest.mark.parametrize("existing", [True, False])
def test_a_failing_command_restores_and_keeps_its_status(tmp_path: Path, existing: bool) -> None:
    policy = tmp_path / "policy-rc.d"
    if existing:
        policy.write_text("#!/bin/sh\nexit 0\n")
    result = run(policy, "sh", "-c", "exit 7")
    assert result.returncode == 7
    assert policy.exists() is existing
    if existing:
        assert policy.read_text() == "#!/bin/sh\nexit 0\n"


def test_sigterm_restores_once_the_command_is_done(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 0\n")
    started, go = tmp_path / "started", tmp_path / "go"
    script = f'touch "{started}"; while [ ! -e "{go}" ]; do sleep 0.02; done'
    env = {**os.environ, "LLAMA_EXPORTER_POLICY_RC_D": str(policy)}
    proc = subprocess.Popen([str(WITHOUT_DAEMONS), "sh", "-c", script], env=env)
    try:
        wait_until(lambda: started.exists() or proc.poll() is not None, "the command to start")
        assert proc.poll() is None
        assert MARKER in policy.read_text()  # ours, while the command runs
        proc.send_signal(signal.SIGTERM)
        go.touch()  # the install finishes; only then is the policy put back
        assert proc.wait(timeout=60) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"


def test_leftovers_of_a_killed_run_are_put_right(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    saved = tmp_path / "policy-rc.d.llama-exporter-saved"
    saved.write_text("#!/bin/sh\nexit 0\n")  # a run killed with SIGKILL left both behind
    policy.write_text(f"#!/bin/sh\n{MARKER}\nexit 101\n")
    result = run(policy, "true")
    assert result.returncode == 0, result.stderr
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"
    assert not saved.exists()


def test_usage_without_a_command(tmp_path: Path) -> None:
    result = run(tmp_path / "policy-rc.d")
    assert result.returncode == 2
    assert "usage" in result.stderr
