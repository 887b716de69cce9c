"""The built-in predictors, one module each, registered in `mixture.registry.PREDICTORS`.

Modules: `gbdt` (LightGBM, the papers' regressor), `ridge` (ridge on the weights and on their
square roots: RegMix's linear baseline), `mixing_law` (Ye et al. 2024), `mixing_law_components`
(one such law per target component, Huber loss), `gp` (a Gaussian process with a noise term
and a std) and `ngram` (the n-gram estimate on a line, alone and with a `gp` on what it misses).
`mixture.search.predictor` says what a predictor is and how a fit picks one by cross-validation.
"""
