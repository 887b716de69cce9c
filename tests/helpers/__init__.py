"""Modules that tests import or run in subprocesses (toy stages, extensions)."""
