"""The root model, `Config`: one key per section, each section from its family's module here, and
the config hash over named sections (`Config.section_hash`). And how a run's YAML file becomes one
(`load_config`, with `--set` overrides: `parse_overrides`): validated before any work starts, an
unknown key, a wrong type or an impossible value is one `ConfigError` that names the key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mixture.config.climblab import ShardsConfig
from mixture.config.climbmix import BuildConfig
from mixture.config.cluster import ClusterConfig, EmbedConfig
from mixture.config.curate import CurateConfig, InputConfig
from mixture.config.publish import PublishConfig
from mixture.config.run import ConcurrencyConfig, RefreshConfig, TrackingConfig
from mixture.config.search import SearchConfig
from mixture.config.section import NestedConfigError, Section, Uri, hashed_dump


class ConfigError(ValueError):
    """A configuration that cannot run. The message names the offending key."""


class Config(Section):
    run_name: str = "climb"
    output_root: Uri
    seed: int = 0
    input: InputConfig = InputConfig()
    curate: CurateConfig = CurateConfig()
    embed: EmbedConfig = EmbedConfig()
    cluster: ClusterConfig = ClusterConfig()
    shards: ShardsConfig = ShardsConfig()
    search: SearchConfig = SearchConfig()
    build: BuildConfig = BuildConfig()
    publish: PublishConfig = PublishConfig()
    tracking: TrackingConfig = TrackingConfig()
    concurrency: ConcurrencyConfig = ConcurrencyConfig()
    refresh: RefreshConfig = RefreshConfig()

    def section_hash(self, *names: str, exclude: tuple[str, ...] = ()) -> str:
        """sha256 of the canonical JSON of the named sections (and the seed), less the
        `section.key` fields in `exclude`. A dotted name (`curate.selection`) is a part of a
        section: a field, a subsection or a property."""
        payload: dict[str, Any] = {n: hashed_dump(self.value(n)) for n in names}
        for dotted in exclude:
            section, key = dotted.split(".", 1)
            payload.get(section, {}).pop(key, None)
        payload["seed"] = self.seed
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def uris(self, dotted: str) -> list[str]:
        """The URIs at a dotted key that names one URI, a list of them, or nothing."""
        value = self.value(dotted)
        return [value] if isinstance(value, str) else list(value or [])

    def value(self, dotted: str) -> Any:
        """The value at a dotted key (`search.target.val_uris`): a field, a subsection or a property."""
        value: Any = self
        for key in dotted.split("."):
            value = getattr(value, key)
        return value


def _format_errors(err: ValidationError, source: str) -> str:
    """One line: `invalid configuration in FILE: key: problem; key: problem`."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        nested = (e.get("ctx") or {}).get("error")
        if isinstance(nested, NestedConfigError):
            key, msg = f"{key}.{nested.key}", nested.msg
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{key}: {msg}")
    return f"invalid configuration in {source}: " + "; ".join(lines)


def parse_config(data: dict[str, Any], source: str = "<dict>", base_dir: Path | None = None) -> Config:
    """Validate a mapping. Relative local paths are resolved against `base_dir`."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {source}: the top level must be a mapping")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None
    if base_dir is not None:
        cfg = _resolve_paths(cfg, base_dir)
    return cfg


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate a YAML run configuration. `overrides` maps dotted keys to values."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(err)}") from None
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    # Relative paths in a config file are relative to the directory the command runs in, as for
    # every other CLI argument; ABSOLUTE paths are kept. (Resolved so Spark workers and Airflow
    # tasks, which may run elsewhere, see the same place.)
    return parse_config(data, str(path), base_dir=Path.cwd())


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error as one line: what is wrong and where (not the document's text, which can
    hold anything)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or (str(err).splitlines() or ["unreadable"])[0]
    context = getattr(err, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{context + ', ' if context else ''}{problem}{where}"


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key.sub=value` strings (the CLI's and jobs' `--set`) -> {dotted key: YAML-parsed value}."""
    out = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"--set takes key=value, got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k] = yaml.safe_load(v)
        except yaml.YAMLError:
            raise ConfigError(f"--set {k}: the value is not valid YAML") from None
    return out


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set the entry of `data` at the dotted key `dotted` (`section.key`, an override) to `value`, in
    place; missing sections are created, a key through a value that is no section is a `ConfigError`."""
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {k} is not a section")
    node[keys[-1]] = value


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _abs(uri: str, base: Path) -> str:
    if not _is_local(uri):
        return uri
    p = Path(uri.removeprefix("file://")).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _resolve_paths(cfg: Config, base: Path) -> Config:
    data = cfg.model_dump()
    data["output_root"] = _abs(cfg.output_root, base)
    data["input"]["uris"] = [_abs(u, base) for u in cfg.input.uris]
    data["search"]["target"]["val_uris"] = [_abs(u, base) for u in cfg.search.target.val_uris]
    data["search"]["target"]["tasks"] = [_abs(u, base) for u in cfg.search.target.tasks]
    data["cluster"]["quality"]["reference_uris"] = [_abs(u, base) for u in cfg.cluster.quality.reference_uris]
    if cfg.build.mixture:
        data["build"]["mixture"] = _abs(cfg.build.mixture, base)
    for key in ("mapping", "assignments"):
        if getattr(cfg.cluster, key):
            data["cluster"][key] = _abs(getattr(cfg.cluster, key), base)
    if cfg.embed.model and ("/" in cfg.embed.model or cfg.embed.model.startswith(".")):
        data["embed"]["model"] = _abs(cfg.embed.model, base)
    if cfg.shards.tokenizer:
        data["shards"]["tokenizer"] = _abs(cfg.shards.tokenizer, base)
    resolved = Config.model_validate(data)
    resolved.input._as_written = list(cfg.input.uris)  # what manifests record: no machine path added
    return resolved
