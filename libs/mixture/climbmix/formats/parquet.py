"""Output format `parquet`: `parquet/part-NNNNN.parquet` with columns text, cluster, id.

The format Hugging Face `datasets` and pyarrow read directly; compression `build.compression`
(zstd by default). The same rows give the same bytes (no timestamps in the file). The held-out
split is `validation/parquet/part-NNNNN.parquet` (the card's YAML header names both splits).
On S3, pyarrow reads `s3://` itself (endpoint and credentials from the AWS environment);
`datasets` would need `s3fs` for an `s3://` glob, so the card's S3 example hands it the table
pyarrow read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq

from mixture import storage
from mixture.climbmix.formats import Shard
from mixture.registry import OUTPUT_FORMATS

if TYPE_CHECKING:
    from mixture.config import BuildConfig


@OUTPUT_FORMATS.register("parquet")
class ParquetFormat:
    name = "parquet"
    files = ("parquet/part-NNNNN.parquet",)
    hf_data_files = "parquet/part-*.parquet"

    def write_shard(self, writer, shard: Shard, cfg: BuildConfig) -> None:
        compression = None if cfg.compression == "none" else cfg.compression
        with storage.open_write(writer.path(f"parquet/{shard.part}.parquet")) as f:
            pq.write_table(shard.table, f, compression=compression)

    def card_files(self, dtype: np.dtype) -> list[str]:
        return [
            "- `parquet/part-NNNNN.parquet`: columns `text`, `cluster`, `id` (the ClimbLab document id; "
            "an upsampled document appears more than once), in the shuffled order."
        ]

    def card_loading(self, dtype: np.dtype) -> list[str]:
        return [
            "pyarrow:",
            "```python",
            "import pyarrow.dataset as ds",
            'table = ds.dataset("parquet/", format="parquet").to_table()',
            "```",
            "Hugging Face datasets:",
            "```python",
            "from datasets import load_dataset",
            'data = load_dataset("parquet", data_files="parquet/part-*.parquet", split="train")',
            "```",
            "A published version straight from S3 (pyarrow reads `s3://` with the endpoint and credentials "
            "of the AWS environment; `datasets` takes the table, no `s3fs` needed):",
            "```python",
            "import pyarrow.dataset as ds",
            "from datasets import Dataset",
            'version = "s3://my-bucket/climbmix/<version>"   # the published version',
            'table = ds.dataset(f"{version}/parquet/", format="parquet").to_table()',
            "data = Dataset(table)",
            "```",
        ]

    def card_validation(self, dtype: np.dtype) -> list[str]:
        return [
            "Parquet: `validation/parquet/part-NNNNN.parquet`, the `validation` split of the YAML header:",
            "```python",
            "from datasets import load_dataset",
            'splits = load_dataset("parquet", data_files={"train": "parquet/part-*.parquet", '
            '"validation": "validation/parquet/part-*.parquet"})',
            "```",
        ]
