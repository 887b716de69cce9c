"""Publishing to a real S3 endpoint (moto's server over HTTP), through a fault-injecting HTTP
proxy where the test needs throttling, 5xx answers or an outage halfway."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import boto3
import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from helpers.climbmix import WEIGHTS, make_climblab, make_config, make_search
from mixture import storage
from mixture.dataset import MANIFEST, DatasetWriter, content_hash
from mixture.pipeline import publish, run_stage
from mixture.publish.publisher import publish_dataset
from mixture.publish.reader import ChecksumError, ClimbMix
from mixture.publish.s3 import PublishError

SECRET_KEY = "testing-secret-key"
KEY_ID = "testing-key-id"


# ----------------------------------------------------------------------- the fault proxy
class FaultProxy:
    """A plain HTTP proxy in front of the S3 endpoint that answers some requests itself:
    - `fail_first_per_request=n`: the first n attempts of every distinct request (method, path
      and query: one upload part, one object) get `status`/`code`, so every operation is retried;
    - `fail_after_writes=k`: after k successful PUT/POST requests everything fails (an outage);
    - `hang_after_writes=k`: after k successful PUT/POST requests requests hang (to kill the
      publisher in the middle of an upload);
    - `rate=r`: a seeded random share r of requests meets one of `kinds`: "503" (SlowDown),
      "500" (InternalError), "reset" (the request reaches S3, then the connection closes without
      an answer), "drop_body" (the request reaches S3, the answer breaks off halfway through its
      body); requests whose path holds one of `spare` are left alone;
    - `corrupt_puts=("part",...)`: the first PUT whose path holds one of these has one byte of its
      body flipped on the way to S3 (a network that damages data)."""

    KINDS = ("503", "500", "reset", "drop_body")

    def __init__(
        self,
        upstream: str,
        status: int = 503,
        code: str = "SlowDown",
        fail_first_per_request: int = 0,
        fail_after_writes: int | None = None,
        hang_after_writes: int | None = None,
        methods: tuple[str, ...] | None = None,
        rate: float = 0.0,
        kinds: tuple[str, ...] = KINDS,
        seed: int = 0,
        spare: tuple[str, ...] = (),
        corrupt_puts: tuple[str, ...] = (),
    ):
        import random

        self.rate, self.kinds, self.spare = rate, kinds, spare
        self.rng = random.Random(seed)
        self.corrupt_puts = list(corrupt_puts)
        self.corrupted: list[str] = []
        self.faults: dict[str, int] = {}
        self.upstream = urlparse(upstream)
        self.status, self.code = status, code
        self.fail_first_per_request = fail_first_per_request
        self.fail_after_writes = fail_after_writes
        self.hang_after_writes = hang_after_writes
        self.methods = methods  # fail only these HTTP methods (None: all)
        self.stopping = threading.Event()
        self.hanging = threading.Event()
        self.lock = threading.Lock()
        self.seen: dict[str, int] = {}
        self.failed = 0
        self.writes = 0
        self.requests: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

            def _handle(self):
                body = self._body()
                if proxy.hang_after_writes is not None and proxy.writes >= proxy.hang_after_writes:
                    proxy.hanging.set()
                    proxy.stopping.wait(60)
                    return
                with proxy.lock:
                    key = f"{self.command} {self.path}"
                    proxy.requests.append(key)
                    kind = proxy._draw(self.command, self.path)
                    body = proxy._maybe_corrupt(self.command, self.path, body)
                    n = proxy.seen.get(key, 0)
                    proxy.seen[key] = n + 1
                    fail = n < proxy.fail_first_per_request or (
                        proxy.fail_after_writes is not None and proxy.writes >= proxy.fail_after_writes
                    )
                    fail = fail and (proxy.methods is None or self.command in proxy.methods)
                    if fail:
                        proxy.failed += 1
                if kind in ("503", "500"):
                    fail = True
                if fail:
                    status, code = (
                        (503, "SlowDown")
                        if kind == "503"
                        else (500, "InternalError")
                        if kind
                        else (proxy.status, proxy.code)
                    )
                    err = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                        f"<Message>injected by the test proxy</Message><RequestId>t</RequestId></Error>"
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(err)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(err)
                    return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("transfer-encoding", "content-length", "connection")
                }
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if self.command in ("PUT", "POST") and resp.status < 300:
                    with proxy.lock:
                        proxy.writes += 1
                if kind == "reset" or (kind == "drop_body" and (self.command == "HEAD" or len(data) < 2)):
                    self.close_connection = True  # the request took effect; no answer
                    return
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        continue
                    self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if kind == "drop_body":
                    self.wfile.write(data[: len(data) // 2])  # Content-Length promised it all
                    self.close_connection = True
                elif self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _draw(self, method: str, path: str) -> str | None:
        """The random fault for this request, if any (called under the lock)."""
        if not self.rate or any(s in path for s in self.spare) or self.rng.random() >= self.rate:
            return None
        kind = self.rng.choice(self.kinds)
        self.faults[kind] = self.faults.get(kind, 0) + 1
        return kind

    def _maybe_corrupt(self, method: str, path: str, body: bytes) -> bytes:
        hit = next((p for p in self.corrupt_puts if p in path), None)
        if method != "PUT" or hit is None or len(body) < 2:
            return body
        self.corrupt_puts.remove(hit)
        self.corrupted.append(path)
        mid = len(body) // 2
        return body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1 :]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def via(monkeypatch, s3_endpoint):
    """Route boto3 (and pyarrow) through a proxy for the duration of a `with` block."""
    from contextlib import contextmanager

    @contextmanager
    def route(proxy: FaultProxy):
        with proxy:
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
            try:
                yield proxy
            finally:
                monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)

    return route


# ------------------------------------------------------------------------------- helpers
@pytest.fixture
def built(tmp_path, sample_records, s3_bucket):
    """A committed ClimbMix build under tmp_path/out and a config that publishes it."""
    root = tmp_path / "out"
    lab = make_climblab(root, sample_records)
    make_search(root, lab, WEIGHTS)
    cfg = make_config(root)
    cfg.publish.uri = f"s3://{s3_bucket}/climbmix"
    cfg.publish.track = False
    ds = run_stage(cfg, "climbmix").dataset
    return cfg, ds


def _s3(endpoint):
    return boto3.client("s3", endpoint_url=endpoint)


def _keys(endpoint, bucket, prefix=""):
    out = []
    for page in _s3(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


def big_dataset(tmp_path, mb: float = 11, name="big"):
    """A committed dataset with one file over the multipart threshold and a few small ones."""
    w = DatasetWriter(str(tmp_path / name), "build", "h", {})
    rng = np.random.default_rng(0)
    storage.write_bytes(
        w.path("tokens/part-00000.bin"), rng.integers(0, 255, int(mb * 2**20), dtype=np.uint8).tobytes()
    )
    for i in range(3):
        storage.write_text(w.path(f"small/{i}.txt"), f"small file {i}\n" * (i + 1))
    return w.commit({"documents": 0, "tokens": 0})


# --------------------------------------------------------------------------------- tests
def test_round_trip_reader_and_pyarrow_load_back_identically(built, s3_endpoint, s3_bucket):
    cfg, ds = built
    uri = publish(cfg)
    version = content_hash(ds.manifest.files)[:16]
    assert uri == f"s3://{s3_bucket}/climbmix/{version}"
    keys = _keys(s3_endpoint, s3_bucket)
    assert f"climbmix/{version}/{MANIFEST}" in keys and "climbmix/latest" in keys
    assert {k.split(f"{version}/", 1)[1] for k in keys if f"/{version}/" in k} == {
        f["path"] for f in ds.manifest.files
    } | {MANIFEST}
    latest = json.loads(_s3(s3_endpoint).get_object(Bucket=s3_bucket, Key="climbmix/latest")["Body"].read())
    assert latest["version"] == version and latest["uri"] == uri

    local = pq.read_table([p for p in ds.files("parquet/")][0]).schema
    expected = ClimbMix(ds.uri).read_table()
    mix = ClimbMix(f"s3://{s3_bucket}/climbmix")  # through `latest`
    assert mix.version == version and mix.manifest_sha256 == latest["manifest_sha256"]
    assert mix.read_table().equals(expected) and mix.read_table().schema == local
    # plain pyarrow on the S3 endpoint, no project code
    fs = pafs.S3FileSystem(
        endpoint_override=urlparse(s3_endpoint).netloc,
        scheme="http",
        access_key=KEY_ID,
        secret_key=SECRET_KEY,
        region="us-east-1",
    )
    files = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(f"{s3_bucket}/climbmix/{version}/parquet")))
    assert pq.read_table(files, filesystem=fs).equals(expected)
    # token sequences identical to the local memmaps
    local_docs = list(ClimbMix(ds.uri).iter_tokens())
    remote_docs = list(mix.iter_tokens())
    assert len(remote_docs) == len(local_docs) == ds.manifest.counts["documents"]
    assert all(np.array_equal(a, b) for a, b in zip(local_docs, remote_docs))
    mix.verify()


def test_same_version_is_a_noop_and_different_content_is_refused(built, s3_endpoint, s3_bucket, tmp_path, caplog):
    cfg, ds = built
    cfg.publish.version = "v1"
    uri = publish(cfg)
    s3 = _s3(s3_endpoint)
    before = {k: s3.head_object(Bucket=s3_bucket, Key=k)["LastModified"] for k in _keys(s3_endpoint, s3_bucket)}
    rep = publish_dataset(ds, cfg)
    assert rep.noop and rep.uploaded == 0 and rep.uri == uri and not rep.latest_updated
    after = {k: s3.head_object(Bucket=s3_bucket, Key=k)["LastModified"] for k in _keys(s3_endpoint, s3_bucket)}
    assert after == before

    # a different build under the same version is refused and changes nothing
    other = big_dataset(tmp_path, mb=0.01)
    with pytest.raises(PublishError, match="v1 already exists .* different content"):
        publish_dataset(other, cfg)
    assert {k: s3.head_object(Bucket=s3_bucket, Key=k)["LastModified"] for k in _keys(s3_endpoint, s3_bucket)} == before
    # ...and goes up under a new version, which becomes latest
    rep2 = publish_dataset(other, cfg, version="v2")
    assert not rep2.noop and rep2.latest_updated
    assert json.loads(s3.get_object(Bucket=s3_bucket, Key="climbmix/latest")["Body"].read())["version"] == "v2"
    # re-publishing the older v1 is a no-op that leaves latest at v2
    assert publish_dataset(ds, cfg).latest_updated is False
    assert json.loads(s3.get_object(Bucket=s3_bucket, Key="climbmix/latest")["Body"].read())["version"] == "v2"


def test_multipart_upload_is_verified_against_the_manifest(tmp_path, s3_endpoint, s3_bucket, built):
    cfg, _ = built
    ds = big_dataset(tmp_path, mb=11)
    cfg.publish.multipart_chunk_mb = 5
    rep = publish_dataset(ds, cfg, version="mp")
    assert rep.uploaded == 4
    head = _s3(s3_endpoint).head_object(
        Bucket=s3_bucket, Key="climbmix/mp/tokens/part-00000.bin", ChecksumMode="ENABLED"
    )
    assert head["ETag"].strip('"').endswith("-3")  # 11 MiB in 5 MiB parts
    sha = next(f["sha256"] for f in ds.manifest.files if f["path"] == "tokens/part-00000.bin")
    assert head["Metadata"]["sha256"] == sha
    body = _s3(s3_endpoint).get_object(Bucket=s3_bucket, Key="climbmix/mp/tokens/part-00000.bin")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == sha
    # verification by download gives the same answer
    cfg.publish.verify = "download"
    rep = publish_dataset(ds, cfg, version="mp-download")
    assert rep.uploaded == 4


def test_throttling_and_5xx_are_retried(built, s3_endpoint, s3_bucket, via):
    cfg, _ = built
    # Parquet only: every request fails twice below, and botocore's retry quota (500 tokens a
    # client, 5 a retry) bounds the retries of one publish; the build's other files would pass it
    cfg = cfg.model_copy(update={"build": cfg.build.model_copy(update={"formats": ["parquet"]})})
    ds = run_stage(cfg, "climbmix").dataset
    cfg.publish.max_retries = 3
    with via(FaultProxy(s3_endpoint, status=503, code="SlowDown", fail_first_per_request=1)) as proxy:
        uri = publish(cfg)
    assert proxy.failed >= len(ds.manifest.files) + 2  # every upload, the manifest, the pointer
    assert ClimbMix(uri).read_table().equals(ClimbMix(ds.uri).read_table())
    with via(FaultProxy(s3_endpoint, status=500, code="InternalError", fail_first_per_request=2)) as proxy:
        rep = publish_dataset(ds, cfg, version="after-500s")
    assert proxy.failed > 0 and rep.uploaded == len(ds.manifest.files)
    ClimbMix(rep.uri).verify()


def test_multipart_parts_are_retried(tmp_path, s3_endpoint, s3_bucket, via, built):
    cfg, _ = built
    ds = big_dataset(tmp_path, mb=11)
    cfg.publish.multipart_chunk_mb = 5
    cfg.publish.max_retries = 2
    with via(FaultProxy(s3_endpoint, fail_first_per_request=1)) as proxy:
        rep = publish_dataset(ds, cfg, version="mp-retry")
    parts = [r for r in proxy.requests if "partNumber=" in r]
    assert len(parts) == 6  # 3 parts, each failed once
    ClimbMix(rep.uri).verify()


def test_permanent_errors_are_not_retried(built, s3_endpoint, s3_bucket, via):
    cfg, ds = built
    cfg.publish.concurrency = 1
    with via(
        FaultProxy(s3_endpoint, status=403, code="AccessDenied", fail_first_per_request=100, methods=("PUT",))
    ) as proxy:
        with pytest.raises(PublishError, match="AccessDenied"):
            publish(cfg)
    puts = [r for r in proxy.requests if r.startswith("PUT")]
    assert len(puts) == len(set(puts)), puts  # no retry of a 403
    assert not [k for k in _keys(s3_endpoint, s3_bucket) if k.endswith(MANIFEST)]


def test_interrupted_upload_leaves_no_manifest_and_a_retry_completes_it(built, s3_endpoint, s3_bucket, via):
    cfg, ds = built
    cfg.publish.max_retries = 0
    cfg.publish.concurrency = 1
    version = content_hash(ds.manifest.files)[:16]
    n_files = len(ds.manifest.files)
    with via(FaultProxy(s3_endpoint, status=500, code="InternalError", fail_after_writes=n_files // 2)):
        with pytest.raises(PublishError, match="upload failed|gave up") as err:
            publish(cfg)
    assert SECRET_KEY not in str(err.value) and KEY_ID not in str(err.value)
    keys = _keys(s3_endpoint, s3_bucket)
    assert f"climbmix/{version}/{MANIFEST}" not in keys and "climbmix/latest" not in keys
    assert 0 < len([k for k in keys if k.startswith(f"climbmix/{version}/")]) < n_files
    with pytest.raises(Exception, match="no ClimbMix dataset"):
        ClimbMix(f"s3://{s3_bucket}/climbmix/{version}")
    # a leftover that is not part of the build is removed before the commit
    _s3(s3_endpoint).put_object(Bucket=s3_bucket, Key=f"climbmix/{version}/parquet/stray.parquet", Body=b"x")
    # the object of a file that was uploaded with other bytes is replaced, not trusted
    first = next(k for k in keys if k.startswith(f"climbmix/{version}/"))
    rel = first.split(f"{version}/", 1)[1]
    sha = next(f["sha256"] for f in ds.manifest.files if f["path"] == rel)
    _s3(s3_endpoint).put_object(Bucket=s3_bucket, Key=first, Body=b"damaged", Metadata={"sha256": sha})

    cfg.publish.max_retries = 2
    rep = publish_dataset(ds, cfg)
    assert not rep.noop and 0 < rep.uploaded < n_files and rep.skipped == n_files - rep.uploaded
    keys = _keys(s3_endpoint, s3_bucket)
    assert f"climbmix/{version}/parquet/stray.parquet" not in keys
    assert ClimbMix(f"s3://{s3_bucket}/climbmix").read_table().equals(ClimbMix(ds.uri).read_table())


def test_credentials_never_logged_stored_or_tracked(built, s3_endpoint, s3_bucket, caplog):
    import mlflow

    cfg, ds = built
    cfg.publish.track = True
    cfg.publish.max_retries = 2
    caplog.set_level(logging.DEBUG, logger="mixture")
    caplog.set_level(logging.INFO)
    uri = publish(cfg)
    assert "publishing" in caplog.text and "published" in caplog.text  # the log was captured
    for secret in (SECRET_KEY, KEY_ID):
        assert secret not in caplog.text
    s3 = _s3(s3_endpoint)
    for key in _keys(s3_endpoint, s3_bucket):
        if key.endswith((".json", "latest", ".md")):
            body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read().decode()
            assert SECRET_KEY not in body and KEY_ID not in body, key
    from mixture import tracking

    tracking.setup(cfg)
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")
    assert runs, "the publication was not tracked"
    run = runs[0]
    assert run.data.params["publish.version"] == uri.rsplit("/", 1)[1]
    flat = json.dumps([run.data.params, run.data.tags, run.data.metrics])
    assert SECRET_KEY not in flat and KEY_ID not in flat


def test_bad_targets_are_refused_without_echoing_secrets(built):
    cfg, _ = built
    from mixture.publish.s3 import parse_target

    with pytest.raises(ValueError, match="must not contain credentials"):  # the config refuses it
        cfg.publish.uri = f"s3://{KEY_ID}:{SECRET_KEY}@bucket/prefix"
    with pytest.raises(PublishError) as err:  # and so does the publisher
        parse_target(f"s3://{KEY_ID}:{SECRET_KEY}@bucket/prefix")
    assert SECRET_KEY not in str(err.value)
    cfg.publish.uri = "/local/folder"
    with pytest.raises(PublishError, match="s3://bucket/prefix"):
        publish(cfg)
    cfg.publish.uri = "s3://no-such-bucket-here/p"
    with pytest.raises(PublishError, match="not reachable"):
        publish(cfg)


def test_version_latest_and_stale_build_are_refused(built, s3_bucket):
    cfg, _ = built
    with pytest.raises(PublishError, match="invalid version"):
        publish(cfg, version="latest")
    with pytest.raises(PublishError, match="invalid version"):
        publish(cfg, version="../escape")
    cfg.build.tokens = 999
    with pytest.raises(PublishError, match="climb build"):
        publish(cfg)


def test_cli_build_and_publish(tmp_path, sample_records, s3_bucket, capsys):
    import yaml
    from mixture.cli import main

    root = tmp_path / "out"
    lab = make_climblab(root, sample_records)
    make_search(root, lab, WEIGHTS)
    conf = tmp_path / "run.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "output_root": str(root),
                "seed": 7,
                "input": {"uris": [str(root / "input.jsonl")]},
                "build": {"tokens": 12_000, "shard_docs": 16},
                "tracking": {"experiment": "test"},
                "publish": {"uri": f"s3://{s3_bucket}/mix", "track": False},
            }
        )
    )
    assert main(["build", "--config", str(conf)]) == 0
    assert main(["publish", "--config", str(conf), "--version", "2025-01"]) == 0
    out = capsys.readouterr().out
    assert f"s3://{s3_bucket}/mix/2025-01" in out
    remote = ClimbMix(f"s3://{s3_bucket}/mix")
    assert remote.version == "2025-01"
    assert remote.read_table().equals(ClimbMix(str(root / "climbmix")).read_table())
    # the job entry point: same version again is a no-op, exit 0; a bad version exits non-zero
    import subprocess
    import sys

    job = Path(__file__).resolve().parents[2] / "jobs" / "publish.py"
    ok = subprocess.run(
        [sys.executable, str(job), "--config", str(conf), "--version", "2025-01"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0 and "2025-01" in ok.stdout, ok.stderr
    bad = subprocess.run(
        [sys.executable, str(job), "--config", str(conf), "--version", "latest"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "invalid version" in bad.stderr


def test_publisher_killed_mid_upload_leaves_nothing_visible(built, s3_endpoint, s3_bucket, tmp_path):
    """kill -9 of the publish job in the middle of its uploads; the next run completes it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    cfg, ds = built
    conf = tmp_path / "run.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "output_root": cfg.output_root,
                "seed": cfg.seed,
                "input": {"uris": cfg.input.uris},
                "build": cfg.build.model_dump(),
                "tracking": {"experiment": "test"},
                "publish": {"uri": cfg.publish.uri, "track": False, "concurrency": 1},
                "concurrency": {"lease_ttl_s": 5},
            }
        )
    )
    job = Path(__file__).resolve().parents[2] / "jobs" / "publish.py"
    n_files = len(ds.manifest.files)
    with FaultProxy(s3_endpoint, hang_after_writes=n_files // 2) as proxy:
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url}
        proc = subprocess.Popen(
            [sys.executable, str(job), "--config", str(conf)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proxy.hanging.wait(60), "the publisher never reached the middle of its uploads"
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    version = content_hash(ds.manifest.files)[:16]
    keys = _keys(s3_endpoint, s3_bucket)
    assert f"climbmix/{version}/{MANIFEST}" not in keys and "climbmix/latest" not in keys
    # the first writes were the version's lease, which the killed publisher still holds, and the
    # checksum-validation probe (removed again: moto does not validate)
    lease_key = f"climbmix/_leases/version-{version}.json"
    assert lease_key in keys
    assert len([k for k in keys if k.startswith(f"climbmix/{version}/")]) == n_files // 2 - 2
    with pytest.raises(Exception, match="no ClimbMix dataset"):
        ClimbMix(f"s3://{s3_bucket}/climbmix")
    cfg.publish.track = False
    cfg.concurrency.lease_ttl_s = 5
    t0 = time.time()
    publish(cfg)  # waits for the dead lease to expire, takes it over
    assert time.time() - t0 < 60
    assert lease_key not in _keys(s3_endpoint, s3_bucket)
    assert ClimbMix(f"s3://{s3_bucket}/climbmix").read_table().equals(ClimbMix(ds.uri).read_table())


def test_build_on_s3_publishes_from_s3(s3_endpoint, s3_bucket, built):
    """An output_root on S3: the files are streamed from the source objects."""
    cfg, _ = built
    w = DatasetWriter(f"s3://{s3_bucket}/runs/climbmix", "build", "h", {})
    storage.write_bytes(w.path("tokens/part-00000.bin"), np.arange(5000, dtype=np.uint16).tobytes())
    storage.write_text(w.path("README.md"), "# card\n")
    ds = w.commit({"documents": 0, "tokens": 0})
    rep = publish_dataset(ds, cfg, version="from-s3")
    assert rep.uploaded == 2
    mix = ClimbMix(rep.uri)
    assert np.array_equal(np.frombuffer(mix.read_bytes("tokens/part-00000.bin"), dtype=np.uint16), np.arange(5000))


# ------------------------------------------------------------- faults, races and kills
def test_faults_of_every_kind_at_20_percent(built, s3_endpoint, s3_bucket, via, tmp_path):
    """A fifth of the requests fail: 503, 500, a connection closed after the request took effect,
    a response body dropped halfway. Publishing, the manifest read-back and the reader all retry;
    the reader's verdict is right both ways (a good version reads back identical, a damaged
    object is still caught through the same faults). The version's lease object meets them too."""
    cfg, ds = built
    cfg.publish.max_retries = 3
    with via(FaultProxy(s3_endpoint, rate=0.2, seed=4)) as proxy:
        uri = publish(cfg, version="faulty")
        mix = ClimbMix(uri, cache_dir=str(tmp_path / "cache"))
        mix.verify()
        assert mix.read_table().equals(ClimbMix(ds.uri).read_table())
        assert all(np.array_equal(a, b) for a, b in zip(mix.iter_tokens(), ClimbMix(ds.uri).iter_tokens(), strict=True))
        assert ClimbMix(f"s3://{s3_bucket}/climbmix").version == "faulty"
        good = _s3(s3_endpoint).get_object(Bucket=s3_bucket, Key="climbmix/faulty/parquet/part-00000.parquet")
        raw = bytearray(good["Body"].read())
        raw[len(raw) // 2] ^= 0xFF
        _s3(s3_endpoint).put_object(Bucket=s3_bucket, Key="climbmix/faulty/parquet/part-00000.parquet", Body=bytes(raw))
        with pytest.raises(ChecksumError, match="part-00000.parquet"):
            ClimbMix(uri).verify()
    assert set(proxy.faults) == set(FaultProxy.KINDS), proxy.faults
    assert sum(proxy.faults.values()) >= 10, proxy.faults


def test_byte_flipped_in_flight_is_caught_and_uploaded_again(built, s3_endpoint, s3_bucket, via, caplog):
    """moto stores the checksum header as sent without checking it: the probe finds that out, the
    publisher verifies by download instead, and the damaged upload is replaced."""
    cfg, ds = built
    caplog.set_level(logging.INFO, logger="mixture")
    with via(FaultProxy(s3_endpoint, corrupt_puts=("parquet/part-00001",))) as proxy:
        rep = publish_dataset(ds, cfg, version="flipped")
    assert proxy.corrupted and "flipped/parquet/part-00001" in proxy.corrupted[0]
    assert "verification: download (the endpoint does not validate checksums" in caplog.text
    assert "verification failed after upload" in caplog.text and rep.retried >= 1
    assert not [k for k in _keys(s3_endpoint, s3_bucket) if "/_probe/" in k]  # the probe cleans up
    ClimbMix(rep.uri).verify()


def test_damaged_object_of_an_uncommitted_version_is_uploaded_again(built, s3_endpoint, s3_bucket):
    """An object of a killed attempt with the right size, metadata and stored checksum but other
    bytes (S3 would refuse it; moto kept it): `verify: download` re-uploads it instead of failing."""
    cfg, ds = built
    cfg.publish.verify = "download"
    f = next(f for f in ds.manifest.files if f["path"].endswith(".parquet"))
    raw = bytearray(Path(ds.path(f["path"])).read_bytes())
    checksum = base64.b64encode(hashlib.sha256(bytes(raw)).digest()).decode()
    raw[len(raw) // 2] ^= 0xFF
    _s3(s3_endpoint).put_object(
        Bucket=s3_bucket,
        Key=f"climbmix/dmg/{f['path']}",
        Body=bytes(raw),
        ChecksumSHA256=checksum,
        Metadata={"sha256": f["sha256"]},
    )
    rep = publish_dataset(ds, cfg, version="dmg")
    assert rep.uploaded == len(ds.manifest.files)
    ClimbMix(rep.uri).verify()


def test_objects_changed_after_verification_are_never_committed(built, s3_endpoint, s3_bucket):
    """A publisher that lost its lease meanwhile: its objects were overwritten after it verified
    them. The check before the manifest refuses to commit."""
    from mixture.publish import publisher
    from mixture.publish.s3 import parse_target
    from mixture.publish.upload import Uploader

    cfg, ds = built
    client = storage.s3_client(2)
    target = parse_target(cfg.publish.uri)
    uploader = Uploader(client, target, "lost", cfg, "download")
    publisher._upload_version(ds, ds.manifest.files, uploader, 2)
    rel = ds.manifest.files[0]["path"]
    _s3(s3_endpoint).put_object(Bucket=s3_bucket, Key=f"climbmix/lost/{rel}", Body=b"someone else's bytes")
    with pytest.raises(PublishError, match="changed after they were verified"):
        publisher._check_unchanged(client, uploader, ds.manifest.files)
    assert f"climbmix/lost/{MANIFEST}" not in _keys(s3_endpoint, s3_bucket)


@pytest.fixture
def two_builds(tmp_path, sample_records, s3_bucket):
    """Two committed builds with different content, each with a config file for jobs/publish.py."""
    from helpers.s3 import publishable_builds

    return publishable_builds(tmp_path, sample_records, s3_bucket, "test")


def _publisher(conf: Path, version: str):
    import os
    import subprocess
    import sys

    job = Path(__file__).resolve().parents[2] / "jobs" / "publish.py"
    return subprocess.Popen(
        [sys.executable, str(job), "--config", str(conf), "--version", version],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("climb:")]


def _good(bucket: str, version: str, builds: list) -> int:
    """The committed version verifies and holds one build's documents; which build (index)."""
    mix = ClimbMix(f"s3://{bucket}/climbmix/{version}")
    mix.verify()
    table = mix.read_table()
    return next(i for i, (_, ds) in enumerate(builds) if table.equals(ClimbMix(ds.uri).read_table()))


def test_two_publishers_of_one_version(two_builds, s3_bucket, s3_endpoint):
    """Different builds as one --version at once: one commits, the other is refused in one line;
    identical builds: both succeed. The committed version and `latest` verify."""
    procs = [_publisher(conf, "race1") for conf, _ in two_builds]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = outs[[p.returncode for p in procs].index(2)][1]
    assert len(_errors(loser)) == 1 and "different content" in _errors(loser)[0] and "Traceback" not in loser
    winner = [p.returncode for p in procs].index(0)
    assert _good(s3_bucket, "race1", two_builds) == winner
    latest = ClimbMix(f"s3://{s3_bucket}/climbmix")
    assert latest.version == "race1"
    latest.verify()

    same = [_publisher(two_builds[0][0], "same1") for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in same]
    assert [p.returncode for p in same] == [0, 0], outs
    assert _good(s3_bucket, "same1", two_builds) == 0
    ClimbMix(f"s3://{s3_bucket}/climbmix").verify()


def test_publishers_killed_at_random_points_never_commit_a_bad_version(two_builds, s3_bucket, s3_endpoint):
    """Seeded rounds: two publishers of one version (different builds), one killed with SIGKILL at
    a random moment, then the killed one run again. Never a committed-but-bad version; `latest`
    always reads back and verifies."""
    import random
    import signal
    import time

    rng = random.Random(11)
    for i in range(3):
        version = f"kill{i}"
        procs = [_publisher(conf, version) for conf, _ in two_builds]
        victim = rng.randrange(2)
        time.sleep(rng.uniform(0.3, 2.5))
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(timeout=60)
        out, err = procs[1 - victim].communicate(timeout=120)
        assert procs[1 - victim].returncode in (0, 2) and "Traceback" not in err, err
        rerun = _publisher(two_builds[victim][0], version)
        out, err = rerun.communicate(timeout=120)
        assert rerun.returncode in (0, 2) and "Traceback" not in err, err
        if rerun.returncode == 2:
            assert "different content" in _errors(err)[0]
        _good(s3_bucket, version, two_builds)  # committed by one, and good
        latest = ClimbMix(f"s3://{s3_bucket}/climbmix")
        latest.verify()
