"""Raw corpora for the demo, the tests and the benchmarks (`climb corpus`). Modules:

- `sample`: a real multi-domain corpus from freely licensed text that Debian packages install,
  and the larger pools the scale benchmarks draw from.
"""
