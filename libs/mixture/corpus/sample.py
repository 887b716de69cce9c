"""`climb corpus sample`: a real multi-domain text corpus built from freely licensed text that
Debian packages install, plus Python's standard library as code.

Each source is cut into documents of about 200-5,000 words at paragraph boundaries. Records are
`{"id", "text", "source"}`; `source` is for evaluation only (cluster purity, reports) and no stage
uses it to decide anything. A few exact and near copies are added (`dup_frac`), as real crawls
have them, so that deduplication has work to do. The same sources, seed and counts give the same
corpus. One source can be held out as the search's target validation set (`--target-source`).

Sources (Debian package, licence): man pages (manpages, manpages-dev; GPL/BSD-style per page),
Python 3.11 documentation (python3.11-doc; PSF), Python standard-library code (PSF), Perl's
documentation (perl-doc; Artistic/GPL), GCIDE dictionary (dict-gcide; GPL), WordNet glosses
(wordnet-base; WordNet licence), the Jargon File (jargon-text; public domain), fortunes
(fortunes; public domain / BSD), Debian Policy (debian-policy; GPL), Debian Reference
(debian-reference-en; GPL/MIT).

Larger corpora for `bench/scale.py`: `scale_pool` cuts shorter documents (150-500 words by
default) from these sources plus three larger ones (`SCALE_SOURCES`: the kernel's documentation,
site-packages Python code, the kernel's C files), none twice; `write_scale` writes the first N of
a pool with copies. `climb corpus sample` does not use them: its output is unchanged.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import html
import itertools
import json
import random
import re
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

APT_PACKAGES = [
    "manpages",
    "manpages-dev",
    "python3.11-doc",
    "perl-doc",
    "dict-gcide",
    "wordnet-base",
    "jargon-text",
    "fortunes",
    "debian-policy",
    "debian-reference-en",
]


def _read(path: str) -> str:
    opener = gzip.open if path.endswith((".gz", ".dz")) else open
    with opener(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


_ROFF_ESC = re.compile(r"\\f[BIRP1-4]|\\f\(..|\\f\[[^\]]*\]|\\[&/,|^]|\\s[-+]?\d|\\\*\(..|\\\*.|\\\(..|\\\[[^\]]*\]")


def roff_to_text(src: str) -> str:
    """Plain text of a man page: request lines dropped, font escapes removed."""
    out = []
    for line in src.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith((".", "'")):
            m = re.match(r"[.'](SH|SS)\s+(.*)", line)
            if m:
                out += ["", m.group(2).strip('"')]
            elif re.match(r"[.'](PP|LP|P|TP|IP|br|sp)\b", line):
                out.append("")
            elif re.match(r"[.'](B|I|BR|IR|RB|RI|BI|IB)\s", line):
                out.append(re.sub(r'"', "", line.split(None, 1)[1]))
            continue
        out.append(line)
    text = "\n".join(out)
    text = _ROFF_ESC.sub("", text).replace("\\-", "-").replace("\\e", "\\").replace("\\ ", " ")
    return re.sub(r"\n{3,}", "\n\n", text)


def html_to_text(src: str) -> str:
    src = re.sub(r"(?is)<(script|style|head)\b.*?</\1>", " ", src)
    src = re.sub(r"(?i)<(br|p|div|h\d|li|tr|pre|dt|dd)\b[^>]*>", "\n\n", src)
    src = re.sub(r"<[^>]+>", "", src)
    src = html.unescape(src)
    src = re.sub(r"[ \t]+", " ", src)
    return re.sub(r"\n\s*\n(\s*\n)+", "\n\n", src)


def paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def chunk(
    paras: list[str],
    rng: random.Random,
    min_words: int = 200,
    max_words: int = 5000,
    target_words: tuple[int, int] | None = None,
) -> Iterator[str]:
    """Group paragraphs into documents of min_words..max_words (target drawn per document from
    `target_words`, default min_words + 100 .. min(1500, max_words))."""
    lo, hi = target_words or (min_words + 100, min(1500, max_words))
    target = rng.randint(lo, hi)
    buf: list[str] = []
    n = 0
    for p in paras:
        w = len(p.split())
        if w > max_words:
            continue
        if n + w > max_words and n >= min_words:
            yield "\n\n".join(buf)
            buf, n = [], 0
        buf.append(p)
        n += w
        if n >= target:
            yield "\n\n".join(buf)
            buf, n = [], 0
            target = rng.randint(lo, hi)
    if n >= min_words:
        yield "\n\n".join(buf)


@dataclass(frozen=True)
class Source:
    name: str
    files: Callable[[], list[str]]
    to_text: Callable[[str], str]
    per_file: bool = True  # chunk each file on its own (else: one stream of all files' paragraphs)


def _man_files() -> list[str]:
    files = []
    for sec in "12345678":
        files += [f for f in glob.glob(f"/usr/share/man/man{sec}/*.gz") if "gcloud" not in Path(f).name]
    return sorted(files)


def _stdlib_files() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    return sorted(
        f
        for f in glob.glob(f"{root}/**/*.py", recursive=True)
        if "site-packages" not in f and "/test" not in f and "idle_test" not in f
    )


def _fortunes_text(path: str) -> str:
    return "\n\n".join(x.strip() for x in _read(path).split("\n%\n") if x.strip())


def _gcide_text(path: str) -> str:
    return _read(path)


def _wordnet_text(path: str) -> str:
    out = []
    for line in _read(path).splitlines():
        if line.startswith("  ") or "|" not in line:
            continue
        head, gloss = line.split("|", 1)
        parts = head.split()
        words = [parts[i].replace("_", " ") for i in range(4, 4 + 2 * int(parts[3], 16), 2)]
        out.append(f"{', '.join(words)}: {gloss.strip()}")
    # one paragraph per ~12 glosses so the chunker sees paragraph-sized units
    return "\n\n".join("\n".join(out[i : i + 12]) for i in range(0, len(out), 12))


SOURCES: list[Source] = [
    Source("manpages", _man_files, lambda p: roff_to_text(_read(p))),
    Source(
        "python-docs",
        lambda: sorted(glob.glob("/usr/share/doc/python3.11/html/_sources/**/*.rst.txt", recursive=True)),
        _read,
    ),
    Source("python-code", _stdlib_files, _read),
    Source("perl-docs", lambda: sorted(glob.glob("/usr/share/perl/5.*/pod/*.pod")), _read),
    Source("dictionary", lambda: sorted(glob.glob("/usr/share/dictd/gcide.dict*")), _gcide_text, per_file=False),
    Source("wordnet", lambda: sorted(glob.glob("/usr/share/wordnet/data.*")), _wordnet_text, per_file=False),
    Source("jargon", lambda: sorted(glob.glob("/usr/share/doc/jargon-text/jargon.txt.gz")), _read, per_file=False),
    Source(
        "fortunes",
        lambda: sorted(f for f in glob.glob("/usr/share/games/fortunes/*") if "." not in Path(f).name),
        _fortunes_text,
        per_file=False,
    ),
    Source("debian-policy", lambda: sorted(glob.glob("/usr/share/doc/debian-policy/*.txt.gz")), _read),
    Source(
        "debian-reference",
        lambda: sorted(glob.glob("/usr/share/doc/debian-reference-common/docs/*.en.html")),
        lambda p: html_to_text(_read(p)),
    ),
]


def source_documents(src: Source, rng: random.Random, limit: int) -> list[str]:
    files = src.files()
    rng.shuffle(files)
    docs: list[str] = []
    stream: list[str] = []
    for f in files:
        try:
            text = src.to_text(f)
        except (OSError, UnicodeError, ValueError, IndexError):
            continue  # an unreadable file in a system folder: skip it, the sample stays real text
        if src.per_file:
            docs += chunk(paragraphs(text), rng)
            if len(docs) >= limit * 3:
                break
        else:
            stream += paragraphs(text)
    if not src.per_file:
        # long single streams (a dictionary): take contiguous windows from random offsets
        docs = list(chunk(stream, rng))
    rng.shuffle(docs)
    return docs[:limit]


def _near_copy(text: str, rng: random.Random) -> str:
    """A copy with a few word-level edits (similarity well above 0.8 Jaccard on 5-grams)."""
    words = text.split(" ")
    for _ in range(max(1, len(words) // 200)):
        i = rng.randrange(len(words))
        words[i] = rng.choice(["the", "a", "this", "that", words[i].upper()])
    return " ".join(words)


def build_sample(
    out_dir: str | Path,
    docs_per_source: int = 400,
    seed: int = 0,
    target_source: str | None = "debian-reference",
    target_docs: int = 120,
    dup_frac: float = 0.03,
    sources: list[str] | None = None,
) -> dict[str, int]:
    """Write `corpus.jsonl.gz` (and `target_val.jsonl.gz` for the held-out source) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records: list[dict] = []
    target: list[dict] = []
    counts: dict[str, int] = {}
    for src in SOURCES:
        if sources and src.name not in sources:
            continue
        held_out = src.name == target_source
        docs = source_documents(src, random.Random(f"{seed}-{src.name}"), target_docs if held_out else docs_per_source)
        counts[src.name] = len(docs)
        for i, text in enumerate(docs):
            rec = {"id": f"{src.name}-{i:05d}", "text": text, "source": src.name}
            (target if held_out else records).append(rec)
    missing = [s.name for s in SOURCES if (not sources or s.name in sources) and counts.get(s.name, 0) == 0]
    if missing:
        raise RuntimeError(f"no text found for {missing}; install: apt-get install -y {' '.join(APT_PACKAGES)}")
    n_dups = int(len(records) * dup_frac)
    for j, rec in enumerate(rng.sample(records, n_dups)):
        text = rec["text"] if j % 2 == 0 else _near_copy(rec["text"], rng)
        records.append({"id": f"{rec['id']}-copy", "text": text, "source": rec["source"]})
    rng.shuffle(records)
    _write_jsonl_gz(out / "corpus.jsonl.gz", records)
    if target:
        _write_jsonl_gz(out / "target_val.jsonl.gz", target)
    counts["copies"] = n_dups
    counts["documents"] = len(records)
    return counts


def _write_jsonl_gz(path: Path, records: list[dict], level: int = 9) -> None:
    tmp = path.with_suffix(".tmp")
    # mtime=0: the same records give byte-identical files
    with gzip.GzipFile(tmp, "wb", compresslevel=level, mtime=0) as f:
        for r in records:
            f.write((json.dumps(r, ensure_ascii=False) + "\n").encode())
    tmp.replace(path)


# ------------------------------------------------------------------------- larger corpora
# `scale_pool` (bench/scale.py): many more, shorter documents than the sample, from the sample's
# sources plus three larger ones. Each is real text installed on the machine:
#   linux-docs   the kernel's documentation (linux-doc; GPL-2), reStructuredText and ABI files
#   python-libs  the Python code of the running interpreter's site-packages (each package's own
#                licence; which packages depends on the environment, so pin it to compare runs)
#   linux-code   the kernel's C files, read from the linux-source tarball (linux-source; GPL-2)
def _linux_doc_files() -> list[str]:
    out = []
    for f in glob.glob("/usr/share/doc/linux-doc-*/Documentation/**/*.gz", recursive=True):
        name = Path(f).name[: -len(".gz")]
        if "." not in name or name.endswith((".rst", ".txt", ".yaml")):
            out.append(f)
    return sorted(out)


def _site_packages_files() -> list[str]:
    roots = sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})
    return sorted(
        f
        for root in roots
        for f in glob.glob(f"{root}/**/*.py", recursive=True)
        if "/test" not in f[len(root) :] and "/_vendor/" not in f and "/vendored/" not in f
    )


def _linux_tarballs() -> list[str]:
    return sorted(glob.glob("/usr/src/linux-source-*.tar.xz"))


def _tar_members(path: str, suffix: str, keep: Callable[[str], bool]) -> Iterator[str]:
    """Texts of the tarball's files named *suffix that `keep` accepts, in the tarball's order."""
    import tarfile

    with tarfile.open(path, "r|xz") as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(suffix) and keep(m.name):
                f = tar.extractfile(m)
                if f is not None:
                    yield f.read().decode("utf-8", errors="replace")


def _tar_bytes(path: str, suffix: str) -> int:
    import tarfile

    with tarfile.open(path, "r|xz") as tar:
        return sum(m.size for m in tar if m.isfile() and m.name.endswith(suffix))


SCALE_SOURCES: list[Source] = [
    Source("linux-docs", _linux_doc_files, _read),
    Source("python-libs", _site_packages_files, _read),
    Source("linux-code", _linux_tarballs, _read),  # read member by member (`_source_texts`)
]
SCALE_PACKAGES = ["linux-doc", "linux-source"]
_C_BYTES_PER_WORD = 7.0  # the kernel's .c files: ~7 bytes per whitespace-separated word


def _source_texts(src: Source, rng: random.Random, words_wanted: int) -> Iterator[str]:
    """The texts of a source's files in a seeded order (linux-code: a seeded subset of the
    tarball's C files, in the tarball's order, with about 3x the words wanted: long functions and
    short files give no document)."""
    files = src.files()
    if src.name == "linux-code":
        for tarball in files:
            frac = min(1.0, 3.0 * words_wanted * _C_BYTES_PER_WORD / max(_tar_bytes(tarball, ".c"), 1))
            salt = str(rng.random())

            def keep(name: str, salt: str = salt, frac: float = frac) -> bool:
                h = int(hashlib.sha256(f"{salt}:{name}".encode()).hexdigest()[:12], 16)
                return h < frac * 16**12

            yield from _tar_members(tarball, ".c", keep)
        return
    rng.shuffle(files)
    for f in files:
        try:
            yield src.to_text(f)
        except (OSError, UnicodeError, ValueError, IndexError):
            continue


def _doc_key(text: str) -> bytes:
    return hashlib.sha1(" ".join(text.split()).encode()).digest()


def scale_documents(
    src: Source,
    rng: random.Random,
    limit: int,
    seen: set[bytes],
    min_words: int,
    max_words: int,
    target_words: tuple[int, int],
) -> list[str]:
    """Up to `limit` documents of one source, none equal (whitespace aside) to a document or a
    whole file seen before (`seen`, updated): vendored copies of one file give no documents twice."""
    words_wanted = int(limit * (sum(target_words) / 2 + 30))
    docs: list[str] = []
    stream: list[str] = []
    for text in _source_texts(src, rng, words_wanted):
        key = _doc_key(text)
        if key in seen:
            continue
        seen.add(key)
        if src.per_file:
            for d in chunk(paragraphs(text), rng, min_words, max_words, target_words):
                k = _doc_key(d)
                if k not in seen:
                    seen.add(k)
                    docs.append(d)
            if src.name != "linux-code" and len(docs) >= limit:
                break
        else:
            stream += paragraphs(text)
    if not src.per_file:
        for d in chunk(stream, rng, min_words, max_words, target_words):
            k = _doc_key(d)
            if k not in seen:
                seen.add(k)
                docs.append(d)
    rng.shuffle(docs)
    return docs[:limit]


def scale_pool(
    n_docs: int,
    seed: int = 0,
    min_words: int = 150,
    max_words: int = 500,
    target_words: tuple[int, int] = (150, 400),
    log: Callable[[str], None] | None = None,
) -> tuple[list[dict], dict[str, int]]:
    """`n_docs` distinct records `{"id", "text", "source"}` of min_words..max_words words from every
    source of `SOURCES` and `SCALE_SOURCES`, in a seeded order, and the count per source. The
    documents are shared out evenly over the sources, smallest first: a source that has fewer than
    its share gives all it has and the rest goes to the sources after it. RuntimeError when the
    installed sources hold too little text (the packages to install are in its message)."""
    remaining = n_docs
    seen: set[bytes] = set()
    records: list[dict] = []
    counts: dict[str, int] = {}
    sources = SOURCES + SCALE_SOURCES
    for i, src in enumerate(sources):
        share = -(-remaining // (len(sources) - i))
        docs = scale_documents(
            src, random.Random(f"{seed}-{src.name}"), share, seen, min_words, max_words, target_words
        )
        counts[src.name] = len(docs)
        remaining -= len(docs)
        records += ({"id": f"{src.name}-{j:07d}", "text": t, "source": src.name} for j, t in enumerate(docs))
        if log:
            log(f"{src.name}: {len(docs):,} documents (share {share:,})")
    if remaining > 0:
        packages = " ".join(APT_PACKAGES + SCALE_PACKAGES)
        raise RuntimeError(
            f"the installed sources give {n_docs - remaining:,} distinct documents of "
            f"{min_words}-{max_words} words, {remaining:,} short of {n_docs:,}; "
            f"install: apt-get install -y {packages}"
        )
    random.Random(f"{seed}-pool").shuffle(records)
    return records, counts


def write_scale(
    out_dir: str | Path,
    pool: Iterable[dict],
    n_docs: int,
    seed: int = 0,
    dup_frac: float = 0.03,
    docs_per_file: int = 10_000,
) -> dict[str, int]:
    """A corpus of `n_docs` records: the first distinct ones of `pool` (a `scale_pool`, so the
    corpora of one pool are nested and have the same mix of sources) and `dup_frac` of exact or
    lightly edited copies of them (ids ending in `-copy`), as in the sample, in a seeded order,
    written as `part-NNNNN.jsonl.gz` files of `docs_per_file` records."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    n_copies = int(round(n_docs * dup_frac / (1 + dup_frac)))
    records = list(itertools.islice(pool, n_docs - n_copies))
    if len(records) < n_docs - n_copies:
        raise ValueError(f"the pool has {len(records):,} documents, fewer than {n_docs - n_copies:,}")
    for j, rec in enumerate(rng.sample(records, n_copies)):
        text = rec["text"] if j % 2 == 0 else _near_copy(rec["text"], rng)
        records.append({"id": f"{rec['id']}-copy", "text": text, "source": rec["source"]})
    rng.shuffle(records)
    for part, lo in enumerate(range(0, len(records), docs_per_file)):
        _write_jsonl_gz(out / f"part-{part:05d}.jsonl.gz", records[lo : lo + docs_per_file], level=6)
    counts: dict[str, int] = {}
    for r in records:
        counts[r["source"]] = counts.get(r["source"], 0) + 1
    return {
        **counts,
        "copies": n_copies,
        "documents": len(records),
        "words": sum(len(r["text"].split()) for r in records),
    }


def read_jsonl_gz(paths: Iterable[str | Path]) -> Iterator[dict]:
    """The records of JSONL.gz files, in order."""
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


def write_pool(out_dir: str | Path, records: list[dict], docs_per_file: int = 50_000) -> None:
    """A `scale_pool` as `part-NNNNN.jsonl.gz` files, in order (`read_jsonl_gz` reads it back)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for part, lo in enumerate(range(0, len(records), docs_per_file)):
        _write_jsonl_gz(out / f"part-{part:05d}.jsonl.gz", records[lo : lo + docs_per_file], level=6)
