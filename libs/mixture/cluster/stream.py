"""The curated documents and their embeddings, streamed together in blocks of `BLOCK_ROWS`.

Bounded memory (k-means, CLIMB's clustering step at any corpus size): nothing holds the corpus.
The embed stage writes the vectors in the curated order, so a block of embeddings (read shard by
shard, `mixture.cluster.embeddings`) and the same block of curated columns
(`mixture.curate.documents`) describe the same documents; their ids are compared block by block
and any other order is an error that says what differs. The first pass's per-document results
wait on local disk for the second (`Spill`), and source labels become integer codes
(`source_codes`) so that the report counts them without a Python object per document.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mixture.cluster import embeddings
from mixture.cluster.kmeans import ClusterError, normalize_rows
from mixture.curate import documents
from mixture.dataset import Dataset


def curated_meta_columns(names: list[str]) -> list[str]:
    """id, source, n_words and every q_* signal of the curated docs (no text)."""
    return [c for c in ("id", "source", "n_words") if c in names] + [c for c in names if c.startswith("q_")]


# Rows per streamed block: assign_nearest's chunk, so faiss is asked the same queries as it would
# be on the whole array (the same results bit for bit); 64k x 384 float32 is 100 MB.
BLOCK_ROWS = 1 << 16


def _unit(vecs: np.ndarray) -> np.ndarray:
    """normalize_rows in place (the same values): the block buffer becomes the unit vectors."""
    return np.divide(vecs, np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12), out=vecs)


@dataclass
class Corpus:
    """The curated documents and their embeddings, streamed together in blocks (the embed stage
    writes the vectors in the curated order; any other order is an error)."""

    embeddings: Dataset
    curated: Dataset
    n: int
    d: int
    columns: list[str]  # the curated columns the scorers and the report read

    def blocks(self, text: bool = False) -> Iterator[tuple[int, pa.Array, np.ndarray, pa.Table]]:
        """(first row, ids, unit-norm vectors, curated columns) per block."""
        cols = self.columns + (["text"] if text else [])
        curated = documents.iter_blocks(self.curated, cols, BLOCK_ROWS)
        for (start, ids, vecs), meta in zip(embeddings.iter_blocks(self.embeddings, BLOCK_ROWS), curated):
            if not ids.equals(meta.column("id").combine_chunks().cast(pa.string())):
                raise mismatch(self.embeddings, self.curated, self.n, self.n)
            yield start, ids, _unit(vecs), meta

    def vectors(self) -> Iterator[tuple[int, pa.Array, np.ndarray]]:
        """(first row, ids, unit-norm vectors) per block, from the embeddings alone."""
        for start, ids, vecs in embeddings.iter_blocks(self.embeddings, BLOCK_ROWS):
            yield start, ids, _unit(vecs)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Unit-norm vectors of the given rows (ascending), read shard by shard."""
        return normalize_rows(embeddings.read_rows(self.embeddings, rows))


def mismatch(emb: Dataset, curated: Dataset, n_emb: int, n_cur: int) -> ClusterError:
    """Why the embeddings do not match the curated documents (hashed ids: 8 bytes a document)."""
    a = np.concatenate([documents.id_hashes(b.column("id")) for b in documents.iter_batches(curated, ["id"])])
    b = np.concatenate([documents.id_hashes(ids) for ids, _ in embeddings.iter_shards(emb)])
    missing, unknown = len(np.setdiff1d(a, b)), len(np.setdiff1d(b, a))
    if n_emb == n_cur and not missing and not unknown:
        return ClusterError(f"{emb.uri}: the embeddings are not in the curated documents' order: rerun `embed`")
    return ClusterError(
        f"curated has {n_cur} documents, embeddings {n_emb} ({missing} curated documents without an "
        f"embedding, {unknown} embeddings of documents not in curated): rerun `embed`"
    )


def open_corpus(emb: Dataset, curated: Dataset) -> Corpus:
    """The two inputs, checked to hold the same number of documents (their ids are compared
    block by block while streaming)."""
    if "skipped" in emb.manifest.extra:  # committed for cluster.method field / assignments
        raise ClusterError(
            f"{emb.uri} holds no embeddings ({emb.manifest.extra['skipped']}): run `embed` with cluster.method kmeans"
        )
    files = embeddings.shard_files(emb)
    n_emb, n_cur = sum(r for _, _, r in files), documents.count(curated)
    if n_emb != n_cur:
        raise mismatch(emb, curated, n_emb, n_cur)
    return Corpus(emb, curated, n_emb, embeddings.dimension(emb), curated_meta_columns(documents.column_names(curated)))


class Spill:
    """Per block arrays of the first pass kept on local disk until the second (np.save each)."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def put(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        with open(self.folder / f"{start:012d}.npz", "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]

    def get(self, start: int) -> dict[str, np.ndarray]:
        with np.load(self.folder / f"{start:012d}.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def source_codes(meta: pa.Table, codes: dict[str, int]) -> np.ndarray:
    """int32 code of each document's source label (-1: none or empty), new labels added to `codes`."""
    if "source" not in meta.column_names:
        return np.full(meta.num_rows, -1, dtype=np.int32)
    enc = meta.column("source").combine_chunks().cast(pa.string()).dictionary_encode()
    lookup = np.array([codes.setdefault(v, len(codes)) if v else -1 for v in enc.dictionary.to_pylist()] + [-1])
    idx = enc.indices.fill_null(len(enc.dictionary)).to_numpy(zero_copy_only=False)
    return lookup[idx].astype(np.int32)
