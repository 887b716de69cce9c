"""CLIMB as a data pipeline: curate, embed and cluster, search mixtures, build and publish."""

__version__ = "0.1.0"
