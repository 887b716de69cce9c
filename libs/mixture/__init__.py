"""CLIMB as a data pipeline: curate, embed and cluster, search mixtures, build and publish.

Layers point down only (docs/ARCHITECTURE.md; import-linter in `make check`). Modules:

- `cli`: the command line (climb); `pipeline`: the runner (stages in data-flow order);
  `preflight`: the checks before any stage starts;
- `stages/`: one thin module per stage: read committed inputs, call a family, stage the files;
- the families, one package per thing the pipeline makes, independent but for named interfaces:
  `corpus/` (raw sample corpora), `curate/` (annotated, curated), `cluster/` (embeddings,
  clusters), `climblab/` (per-cluster token shards), `search/` (the mixture), `climbmix/` (the
  training shards), `publish/` (published versions and their readers);
- plumbing every family shares: `config/` (the one validated config), `storage` (local and S3),
  `dataset` (manifests, writer, commit), `increments` (dataset versions and refresh deltas),
  `lease` (one writer at a time), `contract` (the stage types), `registry` (extension points),
  `parallel` (a step's jobs in spawned workers), `spark` (the Spark session), `tracking` (MLflow),
  `faults` (operating-system and environment failures as one line).
"""

__version__ = "0.1.0"
