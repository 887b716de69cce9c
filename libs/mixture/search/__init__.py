"""CLIMB's mixture search (Diao et al., 2025): sample mixtures of the ClimbLab clusters, train
small proxy models on them, fit a predictor of the target score and iterate towards the best
mixture.

Modules, in the order the data flows:

- `sampler`: Dirichlet mixtures around the clusters' token prior (caps, floors, dedup);
- `proxy`: proxy model presets and the trainer (packed windows sampled by the mixture);
- `evaluate`: target metrics: validation bits per byte, multiple-choice tasks; the score;
- `predictor`: the choice among the predictors by CV Spearman; `predictors/`: LightGBM, ridge,
  ridge on sqrt weights, mixing law, per-component mixing laws, Gaussian process, one module each;
- `bootstrap`: the iterative search as pure functions (propose, final); `acquisition`: which
  candidates a later iteration trains (random top N, expected improvement, upper confidence bound);
- `steps`: propose / run_proxy / finish, the units the CLI and Airflow both run; `records`: what
  a finished search writes (mixture.json, iterations, plots, summary); `pool`: the
  processes that train proxies; `carry`: whether a refresh searches again;
- `baselines`: natural, uniform, best-of-random, RegMix vs CLIMB at transfer scale;
- `track`: MLflow (search > iteration > proxy runs); `plots`: the figures;
- `synthetic`: a known-optimum objective and a tiny ClimbLab builder for tests and benchmarks.

The stages are `mixture.stages.search` and `mixture.stages.baselines`.
"""
