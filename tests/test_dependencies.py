"""The engines support the versions pinned beside them: PySpark accepts the installed pandas and
Arrow without a warning (before, every Spark job printed that PySpark "does not yet fully support
pandas >= 3.0.0"), and requirements-common.txt pins what is installed."""

from __future__ import annotations

import re
import warnings
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_pyspark_supports_the_pinned_pandas_and_pyarrow_without_a_warning():
    from pyspark.sql.pandas.utils import require_minimum_pandas_version, require_minimum_pyarrow_version

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a FutureWarning about the versions fails the test
        require_minimum_pandas_version()
        require_minimum_pyarrow_version()


def test_the_pins_are_what_is_installed():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (REPO / "requirements-common.txt").read_text(), re.M))
    for name in ("pandas", "pyspark", "pyarrow", "numpy"):
        assert version(name) == pins[name], name
