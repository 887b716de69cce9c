"""CLIMB's mixture search (Diao et al., 2025): sample mixtures of the ClimbLab clusters, train
small proxy models on them, fit a predictor of the target score and iterate towards the best
mixture.

Modules, in the order the data flows:

- `sampler`: Dirichlet mixtures around the clusters' token prior (caps, floors, dedup);
- `proxy`: proxy model presets and the trainer (packed windows sampled by the mixture, per-run or
  per-cluster random streams; a run may be a segment of a longer one);
- `base`: the shared base proxy every proxy run continues from (`search.base`);
- `experts`: merged cluster experts, a cheap estimate of any mixture's score that screens the
  predictor's top candidates (`search.experts`);
- `ngram`: the n-gram estimate, the target's log-probability under a bigram model of a mixture's
  tokens, from counts before any proxy trains (`search.ngram`; the `ngram` predictors fit it);
- `evaluate`: target metrics: validation bits per byte, multiple-choice tasks; the score; the
  target's select and report parts;
- `predictor`: the choice among the predictors by CV Spearman; `predictors/`: LightGBM, ridge,
  ridge on sqrt weights, mixing law, per-component mixing laws, Gaussian process, n-gram, one
  module each;
- `bootstrap`: the iterative search as pure functions (propose, final); `acquisition`: which
  candidates a later iteration trains (random top N, expected improvement, upper confidence bound);
- `steps`: propose / run_proxy / finish, the units the CLI and Airflow both run; `records`: what
  a finished search writes (mixture.json, iterations, plots, summary); `pool`: the
  processes that train proxies; `carry`: whether a refresh searches again;
- `playoff`: the noise-aware final choice (seed noise from anchor replicates, finalists retrained
  at transfer scale, ties within the noise kept for the search's own choice);
- `noise`: seed noise at proxy scale (pooled over replicated mixtures) and the rank ceiling it puts
  on any predictor;
- `baselines`: natural, uniform, best-of-random, RegMix vs CLIMB at transfer scale;
- `track`: MLflow (search > iteration > proxy runs); `plots`: the figures;
- `synthetic`: a known-optimum objective and a tiny ClimbLab builder for tests and benchmarks.

The stages are `mixture.stages.search` and `mixture.stages.baselines`.
"""
