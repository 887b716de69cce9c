"""One validated run configuration.

A run is described by one YAML file: input URIs, an output root and every stage's parameters.
It is validated with pydantic at load time, before any work starts: an unknown key, a wrong type
or an impossible value is one `ConfigError` that names the key.

Defaults follow the CLIMB paper (Diao et al., NVIDIA 2025; the numbers are listed in docs/CONFIGURATION.md):
K_init = 1000 k-means clusters, prune at a mean quality of 3.0, Ward merge at distance 1.5 to about
20 clusters, a search of 64/32/16 proxy runs, Dirichlet temperature 0.5 with concentration in
[0.1, 5], at most 15 epochs of a cluster, weights floored at 2e-4, 100,000 candidates, LightGBM
with max_depth 4, learning rate 0.01, 1000 rounds, early stopping 20, reg 1, min_child_samples 5.
`configs/demo.yaml` scales these down for 2 CPU cores and says so.

Each stage reads only its own section (plus `seed`); the section's canonical JSON is what the
stage's config hash covers, so changing one stage's parameters re-runs that stage and the ones
downstream of it, not the ones upstream.

Modules: each family's sections live beside each other in one module, in data-flow order: `curate`
(input, curate, filters), `cluster` (embed, cluster, quality), `climblab` (shards), `search`,
`climbmix` (build), `publish` (and the published versions' names); `run` has the run-wide
sections (concurrency, refresh, tracking), `root` the root model and loading, `section` what every
section is (`Section`, `NOT_HASHED`, `Uri`). This package's names are the config's public face.
"""

from mixture.config.climblab import ShardsConfig
from mixture.config.climbmix import BuildConfig
from mixture.config.cluster import ClusterConfig, EmbedConfig, QualityConfig
from mixture.config.curate import CurateConfig, FilterConfig, FiltersConfig, FuzzyDedupConfig, InputConfig
from mixture.config.publish import LATEST, VERSION_PATTERN, VERSION_RE, PublishConfig
from mixture.config.root import Config, ConfigError, load_config, parse_config, parse_overrides, set_dotted
from mixture.config.run import ConcurrencyConfig, RefreshConfig, TrackingConfig
from mixture.config.search import PredictorConfig, ProxyConfig, SearchConfig, TargetConfig
from mixture.config.section import CREDENTIALS_IN_URI, NOT_HASHED, NestedConfigError, Section, Uri

__all__ = [
    "CREDENTIALS_IN_URI",
    "LATEST",
    "NOT_HASHED",
    "VERSION_PATTERN",
    "VERSION_RE",
    "BuildConfig",
    "ClusterConfig",
    "ConcurrencyConfig",
    "Config",
    "ConfigError",
    "CurateConfig",
    "EmbedConfig",
    "FilterConfig",
    "FiltersConfig",
    "FuzzyDedupConfig",
    "InputConfig",
    "NestedConfigError",
    "PredictorConfig",
    "ProxyConfig",
    "PublishConfig",
    "QualityConfig",
    "RefreshConfig",
    "SearchConfig",
    "Section",
    "ShardsConfig",
    "TargetConfig",
    "TrackingConfig",
    "Uri",
    "load_config",
    "parse_config",
    "parse_overrides",
    "set_dotted",
]
