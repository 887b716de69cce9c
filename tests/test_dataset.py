"""The stage contract: staged writes, manifest last, nothing committed by a killed run."""

import json
import signal
import subprocess
import sys
import textwrap

import pytest
from mixture import storage
from mixture.dataset import MANIFEST, DatasetError, DatasetWriter, open_dataset, try_open, up_to_date


def _write(root, name="ds", payload="v1", chash="h1", inputs=None):
    w = DatasetWriter(storage.join(root, name), "test", chash, inputs or {"up": "abc"})
    storage.write_text(w.path("part-0.txt"), payload)
    storage.write_text(w.path("sub/part-1.txt"), payload * 2)
    return w.commit({"documents_in": 2, "documents_out": 2}, {"note": "x"})


def test_commit_writes_manifest_with_checksums(tmp_path):
    ds = _write(str(tmp_path))
    m = json.loads((tmp_path / "ds" / MANIFEST).read_text())
    assert m["stage"] == "test" and m["config_hash"] == "h1" and m["inputs"] == {"up": "abc"}
    assert {f["path"] for f in m["files"]} == {"part-0.txt", "sub/part-1.txt"}
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in m["files"])
    assert m["started_at"] <= m["finished_at"] and m["package_version"] and m["code_version"]
    ds.verify()
    assert not list((tmp_path / "_staging").iterdir())  # staging folder consumed


def test_up_to_date_only_for_same_config_and_inputs(tmp_path):
    _write(str(tmp_path))
    uri = str(tmp_path / "ds")
    assert up_to_date(uri, "h1", {"up": "abc"}) is not None
    assert up_to_date(uri, "h2", {"up": "abc"}) is None
    assert up_to_date(uri, "h1", {"up": "changed"}) is None


def test_recommit_replaces_old_files(tmp_path):
    _write(str(tmp_path), payload="v1")
    w = DatasetWriter(str(tmp_path / "ds"), "test", "h2", {})
    storage.write_text(w.path("only.txt"), "v2")
    ds = w.commit({})
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [MANIFEST, "only.txt"]
    assert ds.manifest.config_hash == "h2"


def test_corruption_is_detected(tmp_path):
    ds = _write(str(tmp_path))
    (tmp_path / "ds" / "part-0.txt").write_text("tampered")
    with pytest.raises(DatasetError, match="checksum"):
        ds.verify()


def test_uncommitted_dataset_is_not_readable(tmp_path):
    with pytest.raises(DatasetError, match="no committed dataset"):
        open_dataset(str(tmp_path / "nothing"))


KILLED_STAGE = textwrap.dedent("""
    import sys, time
    from mixture import storage
    from mixture.dataset import DatasetWriter
    root, phase = sys.argv[1], sys.argv[2]
    w = DatasetWriter(storage.join(root, "ds"), "test", "h-new", {})
    with storage.open_write(w.path("big.bin")) as f:
        f.write(b"x" * 1000)
        if phase == "mid-file":
            print("ready", flush=True); time.sleep(60)
    storage.write_text(w.path("small.txt"), "done")
    if phase == "before-commit":
        print("ready", flush=True); time.sleep(60)
    w.commit({})
""")


@pytest.mark.parametrize("phase", ["mid-file", "before-commit"])
@pytest.mark.parametrize("had_old", [False, True])
def test_killed_run_commits_nothing_and_rerun_redoes_it(tmp_path, phase, had_old):
    root = str(tmp_path)
    if had_old:
        _write(root, chash="h-old")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_STAGE, root, phase], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ds = try_open(str(tmp_path / "ds"))
    # the killed run is not visible: either nothing, or the old dataset untouched
    if had_old:
        assert ds is not None and ds.manifest.config_hash == "h-old"
        ds.verify()
    else:
        assert ds is None
    # a clean rerun commits the new dataset
    subprocess.run([sys.executable, "-c", KILLED_STAGE, root, "none"], check=True, timeout=60)
    ds = open_dataset(str(tmp_path / "ds"))
    assert ds.manifest.config_hash == "h-new"
    assert sorted(f["path"] for f in ds.manifest.files) == ["big.bin", "small.txt"]
    ds.verify()


def test_s3_dataset_commit(s3_bucket):
    root = f"s3://{s3_bucket}/runs"
    ds = _write(root)
    assert ds.uri == f"{root}/ds"
    ds.verify()
    assert storage.read_text(ds.path("sub/part-1.txt")) == "v1v1"


def test_scratch_named_tmp_is_never_committed_and_is_deleted_after_the_commit(tmp_path):
    """A stage may keep `.tmp-` scratch in its staging folder until the commit (the build's
    finish record, for a retried commit): never in the manifest, gone from the dataset after."""
    w = DatasetWriter(str(tmp_path / "ds"), "test", "h1", {})
    storage.write_text(w.path("data/part-0.txt"), "kept")
    storage.write_text(w.path(".tmp-shuffle/finished.json"), "{}")
    storage.write_text(w.path("data/part-1.tmp-piece"), "scratch")
    ds = w.commit({"n": 1})
    assert [f["path"] for f in ds.manifest.files] == ["data/part-0.txt"]
    left = sorted(str(p.relative_to(tmp_path / "ds")) for p in (tmp_path / "ds").rglob("*") if p.is_file())
    assert left == [MANIFEST, "data/part-0.txt"]
