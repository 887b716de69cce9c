"""`climb`: the command line.

    climb run --config FILE              every stage in order (publish too when publish.uri is set)
    climb STAGE --config FILE            one stage: curate, select, embed, cluster, shards, search, build
    climb baselines --config FILE        the search's baselines under the same proxy budget
    climb publish --config FILE          publish the ClimbMix dataset to publish.uri
    climb status --config FILE           which datasets are committed, and each one's versions
    climb retract --config FILE --ids FILE --reason TEXT [--delete-old-versions] [--no-publish]
                                         take documents out of every dataset and publish anew
    climb corpus sample --out DIR        build the multi-domain sample corpus from Debian packages

`--set key.sub=value` overrides any config key (validated like the file). Before a command starts
any stage, its inputs, S3 credentials and endpoints are checked (`mixture.preflight`). Exit status
is non-zero on any failure, with one clear line on stderr and status 2 for configuration, input,
endpoint and dataset errors and for the operating system's (a full disk, a file it may not read, a
database that cannot be written: `mixture.faults`); `-v` shows their traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mixture.config import Config, ConfigError, load_config, parse_overrides
from mixture.dataset import DatasetError

log = logging.getLogger("climb")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _fmt_counts(counts: dict[str, Any], keys=("documents_in", "documents_out", "clusters", "tokens", "runs")) -> str:
    return ", ".join(
        f"{k}={counts[k]:,}" if isinstance(counts[k], int) else f"{k}={counts[k]}" for k in keys if k in counts
    )


def print_summary(cfg: Config, results: list, total: float) -> None:
    from mixture import tracking
    from mixture.search.track import leaderboard_url

    rows = [
        [
            r.stage,
            "up to date" if r.skipped else "ran",
            f"{r.seconds:.1f}",
            _fmt_counts(r.dataset.manifest.counts),
            r.dataset.uri,
        ]
        for r in results
    ]
    print("\n" + _table(rows, ["stage", "status", "seconds", "counts", "dataset"]))
    for r in results:
        for key, value in r.summary:
            if key != "up to date":
                print(f"  {r.stage}: {key}: {value}")
    print(f"\ntotal {total:.1f} s. Outputs under {cfg.output_root}")
    try:
        print(f"MLflow UI: {tracking.ui_command(cfg)}  (then open http://127.0.0.1:5000)")
        if any(r.stage == "search" for r in results) and (url := leaderboard_url(cfg)):
            print(f"  the search's proxy runs, best score first: {url}")
    except ValueError:
        pass


def cmd_run(cfg: Config, args) -> int:
    from mixture import pipeline

    t0 = time.time()
    results = pipeline.run_all(cfg, force=args.force, until=args.until)
    if cfg.publish.uri and not args.until:
        out = pipeline.publish(cfg)
        print(f"published: {out}")
    print_summary(cfg, results, time.time() - t0)
    return 0


def cmd_stage(cfg: Config, args) -> int:
    from mixture import pipeline

    t0 = time.time()
    res = pipeline.run_stage(cfg, args.command, force=args.force)
    print_summary(cfg, [res], time.time() - t0)
    return 0


def cmd_status(cfg: Config, args) -> int:
    from mixture import increments, pipeline
    from mixture.dataset import try_open

    rows, chains = [], []
    for s in pipeline.STAGES:
        ds = try_open(pipeline.dataset_uri(cfg, s.dataset))
        if ds is None:
            rows.append([s.dataset, "missing", "", ""])
            continue
        fresh = ds.manifest.config_hash == pipeline.config_hash(cfg, s)
        rows.append(
            [
                s.dataset,
                "committed" if fresh else "committed (config changed)",
                ds.manifest.finished_at,
                _fmt_counts(ds.manifest.counts),
            ]
        )
        if chain := increments.history(ds):
            chains.append([s.dataset, version_chain(chain)])
    print(_table(rows, ["dataset", "state", "finished", "counts"]))
    if chains:
        print("\n" + _table(chains, ["dataset", "versions (newest first)"]))
    return 0


# How `climb status` and the DAG summaries name a lineage's delta counts: (singular, plural).
DELTA_WORDS: dict[str, tuple[str, str]] = {  # in the order they are shown
    "files_new": ("new file", "new files"),
    "files_changed": ("changed file", "changed files"),
    "files_deleted": ("deleted file", "deleted files"),
    "files_unchanged": ("unchanged file", "unchanged files"),
    "documents_new": ("new doc", "new docs"),
    "kept_new": ("new doc kept", "new docs kept"),
    "exact_duplicates_of_existing": ("exact duplicate of existing", "exact duplicates of existing"),
    "near_duplicates_of_existing": ("near duplicate of existing", "near duplicates of existing"),
    "withdrawn": ("withdrawn", "withdrawn"),
    "retracted": ("retracted", "retracted"),
    "removed": ("removed", "removed"),
    "files_rewritten": ("file rewritten", "files rewritten"),
}


def describe_delta(delta: dict[str, Any]) -> str:
    """A lineage's delta in words: `+1 new file, 212 new docs, 5 exact duplicates of existing`;
    counts of zero are left out; keys without a name are shown as they are. Numbers only (a
    retraction's reason is the user's text: shown by `climb retract`, not here)."""
    parts = []
    keys = [k for k in DELTA_WORDS if k in delta] + sorted(k for k in delta if k not in DELTA_WORDS)
    for key in keys:
        value = delta[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value:
            continue
        one, many = DELTA_WORDS.get(key, (key.replace("_", " "), key.replace("_", " ")))
        sign = "+" if key == "files_new" else ""
        parts.append(f"{sign}{value:,} {one if value == 1 else many}")
    return ", ".join(parts)


def version_chain(history: list[dict[str, Any]], limit: int = 6) -> str:
    """`v3 (incremental, +1 new file, 212 new docs) <- v2 (retract, 2 retracted) <- v1 (full)`:
    a dataset's versions from its `lineage.json`, newest first, with the upstream versions each
    covered; older ones are counted."""
    out = []
    for rec in reversed(history[-limit:]):
        words = [rec.get("mode", "?")]
        if delta := describe_delta(rec.get("delta") or {}):
            words.append(delta)
        if upstream := rec.get("upstream"):
            words.append("of " + ", ".join(f"{k} v{v}" for k, v in sorted(upstream.items())))
        out.append(f"v{rec.get('version', '?')} ({', '.join(words)})")
    more = len(history) - limit
    return " <- ".join(out) + (f" <- {more} older" if more > 0 else "")


@dataclass
class RetractReport:
    """What `climb retract` did (ids and counts only: never a document's text)."""

    retracted: int  # documents taken out of `annotated` by this run
    already: int  # documents an earlier run of the same retraction had taken out
    unmatched: list[str]  # entries that matched no document
    annotated_version: int
    rewritten: list[str]  # the datasets committed anew (annotated and those the runner rebuilt)
    published: str | None = None  # the published version's URI
    version: str | None = None
    deleted_versions: list[str] = field(default_factory=list)
    scrubbed_snippets: int = 0
    copies: int = 0  # of those, exact copies (same text) under ids no entry named
    ids: list[str] = field(default_factory=list, repr=False)


def retract(
    cfg: Config,
    ids_file: str,
    reason: str,
    delete_old_versions: bool = False,
    publish: bool = True,
    version: str | None = None,
) -> RetractReport:
    """`climb retract`, callable from a job or a DAG task: take the documents the ids file names
    out of `annotated` (a new version, under the dataset's lease), let the runner rebuild or
    extend every later dataset, scrub MLflow reports, publish a new version (when publish.uri is
    set and `publish`), optionally delete the earlier versions, and read the result back to
    check that no retracted id is in it. Run again after a failure, it carries on."""
    from mixture import increments, pipeline
    from mixture.curate import retract as retraction
    from mixture.dataset import open_dataset

    if not reason.strip():
        raise retraction.RetractError("--reason must say why the documents are retracted")
    entries = retraction.read_entries(ids_file)
    with pipeline.exclusive(cfg, "curate"):
        annotated = open_dataset(pipeline.dataset_uri(cfg, "annotated"))
        match = retraction.resolve(annotated, entries)
        copies = retraction.with_exact_copies(annotated, match)
        already = retraction.already_retracted(annotated, entries)
        if not match.files and not already:
            raise retraction.RetractError(
                f"none of the {len(entries)} entries of {ids_file} matches an annotated document"
            )
        if match.files:
            settings = pipeline.config_hash(cfg, pipeline.stage("curate"), listing=False)
            annotated = retraction.commit(cfg, annotated, match, reason.strip(), settings)
    rewritten = ["annotated"] if match.files else []
    report = RetractReport(len(match.files), len(already), match.unmatched, increments.version(annotated), rewritten)
    report.ids = sorted(set(match.ids) | set(already))
    report.copies = copies
    results = pipeline.run_all(cfg)
    report.rewritten += [pipeline.stage(r.stage).dataset for r in results if not r.skipped]
    report.scrubbed_snippets = retraction.scrub_tracking(cfg, report.ids)
    _retract_publish(cfg, report, publish, delete_old_versions, version)
    return report


def _retract_publish(cfg: Config, report: RetractReport, publish: bool, delete_old: bool, version: str | None) -> None:
    """Publish the rebuilt ClimbMix, delete the earlier versions if asked, and read back what a
    reader now gets (the published `latest`, else the local build) to check it is clean."""
    from mixture import pipeline, storage
    from mixture.curate import retract as retraction
    from mixture.publish.reader import ClimbMix
    from mixture.publish.versions import delete_versions_except

    if publish and cfg.publish.uri:
        report.published = pipeline.publish(cfg, version=version)
        report.version = storage.basename(report.published)
        if delete_old:
            report.deleted_versions = delete_versions_except(cfg, report.version)
        mix = retraction.published_ids_absent(ClimbMix(cfg.publish.uri), report.ids)
        if mix.version != report.version:
            raise retraction.RetractError(f"`latest` points at {mix.version}, not at the new version {report.version}")
    else:
        retraction.published_ids_absent(ClimbMix(pipeline.dataset_uri(cfg, "climbmix")), report.ids)


def _examples(entries: list[str], n: int = 5) -> str:
    """` (e.g. a, b)`: the first entries of a list (ids and patterns: the user's own entries)."""
    return f" (e.g. {', '.join(entries[:n])})" if entries else ""


def cmd_retract(cfg: Config, args) -> int:
    rep = retract(
        cfg,
        args.ids,
        args.reason,
        delete_old_versions=args.delete_old_versions,
        publish=not args.no_publish,
        version=args.version,
    )
    before = f" (and {rep.already:,} retracted before)" if rep.already else ""
    before = (f" ({rep.copies:,} of them exact copies under other ids)" if rep.copies else "") + before
    lines = [
        ("documents retracted", f"{rep.retracted:,}{before}"),
        ("entries matching nothing", f"{len(rep.unmatched):,}" + _examples(rep.unmatched)),
        ("annotated version", f"v{rep.annotated_version}"),
        ("datasets rewritten", ", ".join(rep.rewritten) or "none"),
        ("MLflow snippets replaced", f"{rep.scrubbed_snippets:,}"),
        ("published", rep.published or "not published"),
    ]
    if args.delete_old_versions:
        lines.append(("versions deleted", ", ".join(rep.deleted_versions) or "none"))
    lines.append(("verified", f"no retracted id in {rep.published or 'the local ClimbMix build'}"))
    width = max(len(k) for k, _ in lines)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in lines))
    return 0


def cmd_publish(cfg: Config, args) -> int:
    from mixture import pipeline

    print(pipeline.publish(cfg, version=args.version))
    return 0


def cmd_baselines(cfg: Config, args) -> int:
    from mixture import pipeline, storage

    t0 = time.time()
    results = [pipeline.run_stage(cfg, "search"), pipeline.run_stage(cfg, "baselines", force=args.force)]
    print(storage.read_text(results[-1].dataset.path("table.md")))
    print_summary(cfg, results, time.time() - t0)
    return 0


def cmd_corpus(args) -> int:
    from mixture.corpus import sample as corpus

    counts = corpus.build_sample(
        args.out,
        docs_per_source=args.docs_per_source,
        seed=args.seed,
        target_source=args.target_source or None,
        dup_frac=args.dup_frac,
    )
    print(json.dumps(counts, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mixture.pipeline import STAGES

    p = argparse.ArgumentParser(prog="climb", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp):
        sp.add_argument("--config", required=True, help="YAML run configuration")
        sp.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set search.iterations=[8,4]",
        )
        return sp

    r = with_config(sub.add_parser("run", help="run every stage in order"))
    r.add_argument("--force", action="store_true", help="redo stages that are up to date")
    r.add_argument(
        "--until",
        choices=[s.name for s in STAGES] + [s.dataset for s in STAGES],
        help="stop after this stage (by name or by dataset)",
    )
    for st in STAGES:
        s = with_config(sub.add_parser(st.name, help=f"run the {st.name} stage (dataset '{st.dataset}')"))
        s.add_argument("--force", action="store_true")
    with_config(sub.add_parser("status", help="which datasets are committed"))
    b = with_config(sub.add_parser("baselines", help="compare the search with baseline mixtures"))
    b.add_argument("--force", action="store_true")
    rt = with_config(sub.add_parser("retract", help="take documents out of every dataset, publish anew"))
    rt.add_argument("--ids", required=True, help="file: one document id, id pattern (* ?) or source:<name> per line")
    rt.add_argument("--reason", required=True, help="why (recorded in the manifests, with the number of documents)")
    rt.add_argument("--delete-old-versions", action="store_true", help="delete every earlier published version")
    rt.add_argument("--no-publish", action="store_true", help="rebuild the datasets but publish nothing")
    rt.add_argument("--version", default=None, help="the version to publish (default: the build's content hash)")
    pub = with_config(sub.add_parser("publish", help="publish the ClimbMix dataset to S3"))
    pub.add_argument("--version", default=None)
    c = sub.add_parser("corpus", help="sample corpus tools")
    csub = c.add_subparsers(dest="corpus_command", required=True)
    cs = csub.add_parser("sample", help="build the multi-domain sample corpus from Debian packages")
    cs.add_argument("--out", required=True)
    cs.add_argument("--docs-per-source", type=int, default=300)
    cs.add_argument("--seed", type=int, default=0)
    cs.add_argument(
        "--target-source",
        default="debian-reference",
        help="source held out as the search's target validation set ('' for none)",
    )
    cs.add_argument("--dup-frac", type=float, default=0.03)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("py4j", "urllib3", "botocore", "alembic", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    def dispatch() -> int:
        if args.command == "corpus":
            return cmd_corpus(args)
        cfg = load_config(args.config, parse_overrides(args.set))
        preflight(cfg, args)
        handler = {
            "run": cmd_run,
            "status": cmd_status,
            "publish": cmd_publish,
            "baselines": cmd_baselines,
            "retract": cmd_retract,
        }.get(args.command, cmd_stage)
        return handler(cfg, args)

    return guarded(dispatch, verbose=args.verbose)


def preflight(cfg: Config, args) -> None:
    """The checks of `mixture.preflight` for what the command will read and write, before any
    stage starts (Spark, models): its stages' input files, S3 credentials, endpoints, buckets."""
    from mixture import pipeline
    from mixture import preflight as checks

    if args.command == "run":
        last = pipeline.stage(args.until).name if args.until else None
        names = [s.name for s in pipeline.STAGES]
        stages = pipeline.STAGES[: names.index(last) + 1] if last else pipeline.STAGES
        checks.check(cfg, [k for s in stages for k in s.files], publish=bool(cfg.publish.uri) and not args.until)
    elif args.command == "publish":
        checks.check(cfg, publish=True)
    elif args.command == "retract":
        keys = [k for s in pipeline.STAGES for k in s.files]
        checks.check(cfg, keys, publish=bool(cfg.publish.uri) and not args.no_publish)
    elif args.command in pipeline.BY_NAME:
        checks.check(cfg, pipeline.stage(args.command).files)


def guarded(
    fn: Callable[[], int],
    verbose: bool = False,
    name: str = "climb",
    errors: tuple[type[Exception], ...] | None = None,
) -> int:
    """Run an entry point (`climb` and every `jobs/*.py`): the project's own errors (configuration,
    datasets, bad input, a model that cannot load, counts that do not add up, a dataset another run
    is writing) and the operating system's or environment's (a full disk, a file it may not read, a
    read-only folder, a database that cannot be written, an endpoint that does not answer:
    `mixture.faults`) are one line on stderr, `<name>: ...`, and exit status 2; anything else is a
    bug and keeps its traceback (exit status 1). `-v` shows the traceback of the one-line errors
    too. `errors` narrows the project's one-line errors to those types, for a job whose caller
    retries any other failure (the refresh DAG retries `jobs/curate.py` unless it exits with 2):
    there an endpoint that does not answer is one line with exit status 1 (worth a retry)."""
    from mixture import faults

    try:
        return fn()
    except Exception as err:
        if isinstance(err, faults.ResourceError):
            fault: faults.Fault | None = faults.Fault(str(err), err.transient)
        elif isinstance(err, errors) if errors is not None else _own_error(err):
            fault = faults.Fault(
                ("" if isinstance(err, (ConfigError, DatasetError)) else f"{type(err).__name__}: ") + str(err)
            )
        else:
            fault = faults.describe(err)
        if fault is None:
            raise
        if verbose:
            log.exception("failed")
        print(f"{name}: {faults.redact(fault.line)}", file=sys.stderr)
        return 1 if fault.transient and errors is not None else 2


def _own_error(err: Exception) -> bool:
    return isinstance(err, (ConfigError, DatasetError)) or type(err).__module__.startswith("mixture.")


if __name__ == "__main__":
    sys.exit(main())
