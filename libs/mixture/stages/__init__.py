"""Stage modules: thin orchestration of the libraries, one per stage."""
