"""Pure: what a config reload changes (old Config and models vs new) and how each is applied.

Every setting has one rule (``Rule``): applied live, restarts its model, or needs a
service restart. ``plan`` compares two configs (and the effective model lists, which
include discovered and API-registered models) and says what to add, remove, restart
and change live; a plan with refused keys must not be applied at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from llama_exporter.config.settings import Config, ConfigError, ModelConfig


class Rule(StrEnum):
    """How a changed setting is applied by a reload."""

    LIVE = "applied live"
    RESTART_MODEL = "restarts its model"
    SERVICE = "needs a service restart"


# Model settings the gateway reads at each use: changed without touching the instance.
GATEWAY_ONLY = frozenset({"pinned", "idle_ttl", "stop_drain"})
# Read only when the service starts (or a model is added): nothing to restart for it.
START_ONLY = frozenset({"autostart"})

# Config fields -> the YAML key a user knows them by (only where they differ).
YAML_KEY = {"host": "listen.host", "port": "listen.port"}

# Each top-level Config field's rule. A field missing here (one added later) is refused
# as needing a service restart until someone decides otherwise: tests/test_reload_plan.py
# fails for it, so the decision is made on purpose.
TOP_RULES: Mapping[str, Rule] = {
    "host": Rule.SERVICE,  # the listening socket is bound once, before anything starts
    "port": Rule.SERVICE,
    "state_dir": Rule.SERVICE,  # the lock, instances.json and models.json live there
    "instance_host": Rule.SERVICE,  # running instances and their readers use the old one
    "max_parallel": Rule.LIVE,  # lowering it stops nothing: the next start sees it
    "llama_server": Rule.LIVE,  # the next start of each model runs the new binary
    "ports": Rule.LIVE,  # the next start picks from the new range
    "ready_timeout": Rule.LIVE,
    "stop_grace": Rule.LIVE,
    "hang_timeout": Rule.LIVE,  # the watchdog reads it at every probe
    "log_max_bytes": Rule.LIVE,  # from the next start of each model
    "websocket_max_clients": Rule.LIVE,  # clients already connected stay
    "restart": Rule.LIVE,
    "model_dirs": Rule.LIVE,  # folders listed again: GGUF files added and removed follow
    "defaults": Rule.LIVE,  # discovered models whose launch settings change are restarted
    "models": Rule.LIVE,  # per model: see model_rule
    "targets": Rule.LIVE,  # target files rewritten atomically
    "poll": Rule.LIVE,
    "api_token": Rule.LIVE,
    "scrape_token": Rule.LIVE,
    "allow_unauthenticated": Rule.LIVE,
    "allowed_origins": Rule.LIVE,
    "allowed_hosts": Rule.LIVE,
    "gateway": Rule.LIVE,
    "host_label": Rule.LIVE,  # target files rewritten, series relabelled
    # Fields other work adds (rules decided here so a merge does not refuse them blindly):
    "memory_budget": Rule.LIVE,  # the next start is admitted against it
    "memory_headroom": Rule.LIVE,
    # Instances started with and without their key would mix: all restart with the service.
    "instance_auth": Rule.SERVICE,
    # The request log's store is opened with its settings when the service starts.
    "request_log": Rule.SERVICE,
}
# Sub-keys whose rule differs from their section's.
SUB_RULES: Mapping[str, Rule] = {
    # aiohttp's own body limit is set when the app is built; lowering would be fine but
    # one rule per key is easier to remember.
    "gateway.max_body_bytes": Rule.SERVICE,
}
SOURCE_FIELDS = frozenset({"source"})  # where the file is: not a setting


def model_rule(field: str) -> Rule:
    """How a change of a model's field is applied (every launch setting restarts it)."""
    return Rule.LIVE if field in GATEWAY_ONLY | START_ONLY else Rule.RESTART_MODEL


def launch_settings(model: ModelConfig) -> ModelConfig:
    """The model with its live-only fields blanked: equal values launch the same process."""
    blank = ModelConfig(name=model.name, path=model.path)
    return dataclasses.replace(model, **{f: getattr(blank, f) for f in GATEWAY_ONLY | START_ONLY})


def _changed(old: object, new: object, key: str) -> Iterator[str]:
    """Dotted keys whose values differ; dataclasses are compared field by field."""
    if old == new:
        return
    if dataclasses.is_dataclass(old) and type(old) is type(new) and not isinstance(old, type):
        for f in dataclasses.fields(old):
            yield from _changed(getattr(old, f.name), getattr(new, f.name), f"{key}.{f.name}")
        return
    yield key


def changed_keys(old: Config, new: Config) -> list[str]:
    """Every changed top-level setting as its dotted YAML key, models aside."""
    keys: list[str] = []
    for f in dataclasses.fields(Config):
        name = f.name
        if name in SOURCE_FIELDS or name == "models":
            continue
        if name == "targets":  # None means <state_dir>/targets with no labels
            for sub, a, b in (
                ("directory", old.targets_dir, new.targets_dir),
                ("labels", _labels(old), _labels(new)),
                ("address", _address(old), _address(new)),
            ):
                if a != b:
                    keys.append(f"targets.{sub}")
            continue
        keys.extend(_changed(getattr(old, name), getattr(new, name), YAML_KEY.get(name, name)))
    return keys


def _labels(config: Config) -> dict[str, str]:
    return dict(config.targets.labels) if config.targets else {}


def _address(config: Config) -> str | None:
    return config.targets.address if config.targets else None


def key_rule(key: str) -> Rule:
    """The rule of a dotted top-level key as changed_keys() names it."""
    if key in SUB_RULES:
        return SUB_RULES[key]
    head = key.split(".", 1)[0].split("[", 1)[0]
    field = {v: k for k, v in YAML_KEY.items()}.get(key, head)
    return TOP_RULES.get(field, Rule.SERVICE)


@dataclass(frozen=True)
class ModelChanges:
    """What happens to each model (names sorted)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()  # launch settings changed: restarted if running
    live: tuple[str, ...] = ()  # only gateway settings (or autostart) changed
    autostart: tuple[str, ...] = ()  # added with autostart, or autostart turned on


def diff_models(old: Mapping[str, ModelConfig], new: Mapping[str, ModelConfig]) -> ModelChanges:
    """Compare two name -> ModelConfig lists (the effective ones: every source)."""
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    restart, live, autostart = [], [], [n for n in added if new[n].autostart]
    for name in sorted(set(old) & set(new)):
        a, b = old[name], new[name]
        if a == b:
            continue
        if launch_settings(a) != launch_settings(b):
            restart.append(name)
        else:
            live.append(name)
        if b.autostart and not a.autostart:
            autostart.append(name)
    return ModelChanges(
        tuple(added), tuple(removed), tuple(restart), tuple(live), tuple(sorted(autostart))
    )


@dataclass(frozen=True)
class Plan:
    """A reload's plan: model changes, top-level keys applied live, keys refused."""

    models: ModelChanges
    live: tuple[str, ...] = ()  # top-level keys changed and applied live
    refused: tuple[str, ...] = ()  # top-level keys that need a service restart

    @property
    def empty(self) -> bool:
        """Nothing changed at all."""
        m = self.models
        return not (self.live or self.refused or m.added or m.removed or m.restart or m.live)

    def refusal(self, file: Any = None) -> ConfigError | None:
        """The error for the refused keys (the whole file is then not applied), or None."""
        if not self.refused:
            return None
        keys = ", ".join(self.refused)
        return ConfigError(
            self.refused[0],
            f"cannot change {keys} while the service runs: it needs a service restart; "
            "nothing of this file was applied",
            file=file,
            hint=f"put {keys} back to the running value and reload, or restart the service",
        )

    def summary(self) -> dict[str, list[str]]:
        """The plan as plain lists (the API answer, the event, the log)."""
        m = self.models
        return {
            "added": list(m.added),
            "removed": list(m.removed),
            "restarted": list(m.restart),
            "changed_live": list(m.live),
            "settings_live": list(self.live),
        }


def plan(
    old: Config,
    new: Config,
    old_models: Mapping[str, ModelConfig] | None = None,
    new_models: Mapping[str, ModelConfig] | None = None,
) -> Plan:
    """The plan from old to new; the model lists default to each config's `models:`."""
    before = {m.name: m for m in old.models} if old_models is None else old_models
    after = {m.name: m for m in new.models} if new_models is None else new_models
    keys = changed_keys(old, new)
    live = tuple(k for k in keys if key_rule(k) is Rule.LIVE)
    refused = tuple(k for k in keys if key_rule(k) is not Rule.LIVE)
    return Plan(diff_models(before, after), live, refused)
