"""The built-in predictors, one module each, registered in `mixture.registry.PREDICTORS`."""
