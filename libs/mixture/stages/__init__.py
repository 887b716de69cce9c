"""Stage modules: thin orchestration of the families, one per stage, in `mixture.pipeline`'s order.

A stage reads its committed inputs, calls its family's package and stages its files; the runner
commits them. Modules, in the order the data flows (each named after its CLI verb):

- `curate`: raw files -> annotated, on Spark (`mixture.curate`);
- `select`: annotated -> curated, no Spark (`mixture.curate`);
- `embed`: curated -> embeddings (`mixture.cluster`);
- `cluster`: curated + embeddings -> clusters (`mixture.cluster`);
- `shards`: curated + clusters -> climblab, token shards per cluster (`mixture.climblab`);
- `search`: climblab -> search, the mixture (`mixture.search`);
- `build`: climblab + search -> climbmix, the training shards (`mixture.climbmix`);
- `baselines`: climblab + search -> baselines, on request (`mixture.search`).
"""
