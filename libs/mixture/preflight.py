"""Checks that run before any Spark or model start-up, so a bad input is one line in seconds.

A curation that starts Spark (about 25 s) before it finds that its input path is missing, or a
run that waits for 49 s of connection retries on an endpoint that is down, wastes the user's time
and prints a traceback. The entry points (`climb`, `jobs/curate.py`, `jobs/publish.py`) call
`check(cfg, file_keys)` (the config keys that name the files their stages read) right after the
config is loaded; it raises `PreflightError` (a `ConfigError`: one line naming the key and URI,
exit status 2) for:

- S3 credentials absent when a URI the run needs is on S3 (`AWS_ACCESS_KEY_ID`/profile/role);
- an S3 endpoint that does not answer within `CONNECT_TIMEOUT_S`, or a bucket that is missing
  or denied (one HEAD per bucket, no retries);
- an input path that does not exist, an input folder with no files, a glob that matches nothing,
  a missing S3 key (inputs are listed through `mixture.storage`, as the curation lists them);
- a local input file that cannot be opened (permission denied), and an input that holds no
  document: every file empty, or every record of its small files (read with the curation's own
  reader, `mixture.curate.ingest`) one the curation would quarantine. Without this check the run
  commits empty datasets and stops stages later with a message that says nothing of the cause;
- credentials in `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`): refused like credentials in a
  configured URI, without printing them;
- an MLflow server (`tracking.uri` on http/https) that does not accept a connection;
- a file named by a stage's config (target sets, tasks, a mixture file, a tokenizer) that does
  not exist;
- a run with the cluster stage whose quality scorer is `heuristic` (it scores the curated `q_*`
  signals) while every curate filter is off: the annotation then stores no signal
  (`curate.signals`), and the cluster stage would stop after curate, select and embed had run.

URIs in these messages are the config's own, which `mixture.config` has already checked to hold
no credentials; endpoints are printed without user-info.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from mixture import storage
from mixture.config import Config, ConfigError
from mixture.config.section import CREDENTIALS_IN_URI

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2.0  # an endpoint that does not accept a connection by then is down
SMALL_FILE_BYTES = 1 << 20  # input files up to this size are read to find a document
READ_FILES = 64  # at most this many small files are read (then the input is taken to hold documents)


class PreflightError(ConfigError):
    """A configured input, output or endpoint that cannot work; the message names the key."""


def check(cfg: Config, file_keys: Iterable[str] = (), publish: bool = False) -> None:
    """Every check that applies to a run whose stages read the files named by `file_keys`
    (dotted config keys, the stages' `files`) and, with `publish`, to publishing; raises
    PreflightError on the first problem."""
    check_endpoint_url()
    keys: dict[str, list[str]] = {key: cfg.uris(key) for key in file_keys}
    if publish and cfg.publish.uri:
        keys["publish.uri"] = [cfg.publish.uri]
    if any(keys.values()) or storage.is_s3(cfg.output_root):
        keys.setdefault("output_root", [cfg.output_root])
    s3 = {key: [u for u in uris if storage.is_s3(u)] for key, uris in keys.items()}
    if any(s3.values()):
        check_credentials(next(k for k, v in s3.items() if v))
        check_buckets(s3)
    for key, uris in keys.items():
        if key not in ("output_root", "publish.uri"):
            check_files(key, uris)
    if keys.get("input.uris"):
        check_documents(cfg)
    if "cluster.mapping" in keys:  # a file key of the cluster stage: it is part of the run
        check_quality_signals(cfg)
    check_tracking(cfg)


def check_quality_signals(cfg: Config) -> None:
    from mixture.curate.filters import signal_names

    if cfg.cluster.quality.scorer == "heuristic" and not signal_names(cfg.curate.filters, cfg.curate.every_signal):
        raise PreflightError(
            "cluster.quality.scorer: heuristic scores the curated q_* signals, and with every curate filter off "
            "none is stored: enable a filter, set curate.signals: all, or choose another scorer"
        )


def check_endpoint_url() -> None:
    """No credentials in the S3 endpoint of the environment (boto3, Arrow and MLflow all use it):
    a `user:secret@` there would be printed by every error that names the endpoint."""
    import os
    from urllib.parse import urlparse

    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        url = os.environ.get(name) or ""
        if "://" in url and "@" in urlparse(url).netloc:
            raise PreflightError(
                f"{name} {CREDENTIALS_IN_URI} (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile "
                "or a role), not in the endpoint's URL"
            )


def check_tracking(cfg: Config) -> None:
    """An MLflow server named by `tracking.uri` accepts a connection (MLflow itself retries a dead
    one for minutes)."""
    import socket
    from urllib.parse import urlparse

    uri = cfg.tracking.uri or ""
    if not uri.startswith(("http://", "https://")):
        return
    p = urlparse(uri)
    port = p.port or (443 if p.scheme == "https" else 80)
    try:
        socket.create_connection((p.hostname or "", port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise PreflightError(
            f"tracking.uri: the MLflow server {p.scheme}://{p.hostname}:{port} is not reachable "
            f"({type(err).__name__}, {CONNECT_TIMEOUT_S:g} s connect timeout)"
        ) from None


def check_credentials(key: str) -> None:
    """S3 credentials are present in the standard AWS provider chain (not checked for validity:
    the bucket check does that)."""
    import boto3

    if boto3.session.Session().get_credentials() is None:
        raise PreflightError(
            f"{key}: S3 credentials are not set; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or run with an instance role"
        )


def _probe_client():
    """A boto3 client that gives up fast: a short connect timeout and no retries."""
    import boto3
    from botocore.config import Config as BotoConfig

    endpoint, region = storage.s3_settings()
    kwargs: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": 5,
        "retries": {"total_max_attempts": 1},
    }
    if endpoint:
        kwargs["s3"] = {"addressing_style": "path"}
    return boto3.session.Session().client("s3", region_name=region, config=BotoConfig(**kwargs))


def check_buckets(s3: dict[str, list[str]]) -> None:
    """One HEAD per bucket named under each key: the endpoint answers, the bucket exists and the
    credentials may use it."""
    from botocore.exceptions import BotoCoreError, ClientError

    from mixture.publish.s3 import redact_url

    client = _probe_client()
    endpoint = redact_url(storage.s3_settings()[0]) or "AWS S3"
    seen: set[str] = set()
    for key, uris in s3.items():
        for uri in uris:
            bucket = storage.split_s3(uri)[0]
            if bucket in seen:
                continue
            seen.add(bucket)
            try:
                client.head_bucket(Bucket=bucket)
            except ClientError as err:
                status = storage.s3_status(err)
                what = {404: "does not exist", 403: "is not accessible with these credentials"}.get(
                    status, f"cannot be used ({storage.describe_error(err)})"
                )
                raise PreflightError(f"{key}: bucket {bucket} {what} (endpoint {endpoint})") from None
            except BotoCoreError as err:
                raise PreflightError(
                    f"{key}: the S3 endpoint {endpoint} is not reachable "
                    f"({type(err).__name__}, {CONNECT_TIMEOUT_S:g} s connect timeout)"
                ) from None


def check_files(key: str, uris: list[str]) -> None:
    """Each URI names at least one file: a file, a folder with files, or a glob that matches."""
    for uri in uris:
        try:
            found = storage.expand([uri])
            present = found or (not _is_glob(uri) and storage.exists(uri))
        except OSError as err:
            raise PreflightError(f"{key}: {uri} cannot be listed ({type(err).__name__})") from None
        if found:
            continue
        if _is_glob(uri):
            raise PreflightError(f"{key}: {uri} matches no files")
        if not present:
            raise PreflightError(f"{key}: {uri} does not exist")
        raise PreflightError(f"{key}: {uri} is a folder with no files")


def _is_glob(uri: str) -> bool:
    return any(c in uri for c in "*?[")


def check_documents(cfg: Config) -> None:
    """The input holds a document: its local files can be opened, not every file is empty, and
    its small files (up to SMALL_FILE_BYTES, at most READ_FILES of them) hold a record the
    curation keeps past its quarantine; a larger file is taken to hold documents."""
    from mixture.curate import ingest

    files = ingest.list_inputs(cfg.input.uris)
    check_readable(files)
    opts = ingest.ReadOptions.from_config(cfg.input, cfg.curate.max_doc_bytes)
    reasons: dict[str, int] = {}
    read = 0
    for f in files:
        size = storage.size(f.uri)
        if size == 0:
            continue
        if size > SMALL_FILE_BYTES or read >= READ_FILES:
            return
        read += 1
        split = ingest.Split(f.uri, f.rel, ingest.file_kind(f.uri, cfg.input.format))
        for rec in ingest.read_split(split, opts):
            if rec.reason is None:
                return
            reasons[rec.reason] = reasons.get(rec.reason, 0) + 1
    what = f"{len(files)} file{'s' * (len(files) != 1)}"
    if not reasons:
        raise PreflightError(f"input.uris: no document in the input ({what}, every one empty): nothing to curate")
    n = sum(reasons.values())
    why = ", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
    raise PreflightError(
        f"input.uris: no document in the input ({what}; {n:,} records, each one the curation would "
        f"quarantine: {why}): nothing to curate"
    )


def check_readable(files: list) -> None:
    """Every local input file can be opened for reading (S3 keys are read by the curation, and a
    denied one is a quarantine record there)."""
    for f in files:
        path = storage.local_path(f.uri)
        if path is None:
            continue
        try:
            open(path, "rb").close()
        except OSError as err:
            reason = "permission denied" if isinstance(err, PermissionError) else type(err).__name__
            raise PreflightError(
                f"input.uris: {f.uri} cannot be read ({reason}): give the user running climb read access "
                "to it, or leave it out of input.uris"
            ) from None
