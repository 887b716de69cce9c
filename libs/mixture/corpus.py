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
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import html
import json
import random
import re
import sysconfig
from collections.abc import Callable, Iterator
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


def chunk(paras: list[str], rng: random.Random, min_words: int = 200, max_words: int = 5000) -> Iterator[str]:
    """Group paragraphs into documents of min_words..max_words (target drawn per document)."""
    target = rng.randint(min_words + 100, min(1500, max_words))
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
            target = rng.randint(min_words + 100, min(1500, max_words))
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


def _write_jsonl_gz(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    # mtime=0: the same records give byte-identical files
    with gzip.GzipFile(tmp, "wb", compresslevel=9, mtime=0) as f:
        for r in records:
            f.write((json.dumps(r, ensure_ascii=False) + "\n").encode())
    tmp.replace(path)


def fingerprint(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
