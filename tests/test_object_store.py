"""An `s3://` warehouse, for real: moto's S3 server on 127.0.0.1 holds the Delta tables, the raster
shards, the checkpoint and the report; the whole graph runs on one region, a scoped re-run replaces
only its rows, polars and DuckDB read the tables back, and the credentials appear nowhere."""

import functools
import os
import socket
import subprocess
import sys
import time
import urllib.request

import obstore
import polars as pl
import pytest

from s2vec_assets.definitions import defs as load_defs
from s2vec_assets.defs.resources import WarehouseResource
from s2vec_core import registry, warehouse
from s2vec_core.artifacts import ArtifactError, ArtifactStore, obstore_options
from tests.conftest import materialize_selection
from tests.test_concurrent_writes import assert_history_sound, assert_one_copy_per_region, write_at_once
from tests.test_model_assets import TINY as MODEL_ASSETS_TINY

BUCKET = "s2vec-warehouse"
SECRET = "s3cr3t-never-logged-8f2c"
REGION = "monaco"
LEVELS = {"image_level": 14, "pixel_level": 18}
TINY = {**MODEL_ASSETS_TINY, "epochs": 2}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A fresh moto S3 server on a free loopback port with one bucket; credentials in the environment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("moto's S3 server did not start") from None
            time.sleep(0.1)
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT"), timeout=5)
    env = {
        # deltalake and obstore read these; the whole-graph test passes the same as storage options.
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "s2vec-test",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        "S2VEC_ARTIFACT_CACHE": str(tmp_path_factory.mktemp("artifact-cache")),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield {"endpoint": endpoint, "allow_http": "true"}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.terminate()
    server.wait(10)


def _objects(options, prefix: str = "") -> list[str]:
    store = ArtifactStore(f"s3://{BUCKET}", options)._store()
    return sorted(m["path"] for batch in obstore.list(store, prefix=prefix) for m in batch)


def test_storage_options_translate_for_obstore():
    config, client = obstore_options(
        "s3://b/p",
        {
            "endpoint": "http://h",
            "AWS_REGION": "eu-west-1",
            "allow_http": "true",
            "AWS_S3_ALLOW_UNSAFE_RENAME": "1",
        },
    )
    assert config == {"aws_endpoint": "http://h", "aws_region": "eu-west-1"}
    assert client == {"allow_http": "true"}
    assert obstore_options("/local/dir", None) == ({}, {})


def test_directory_versions_swap_whole(s3, tmp_path):
    store = ArtifactStore(f"s3://{BUCKET}/unit", s3, cache_dir=tmp_path / "a")
    with pytest.raises(ArtifactError, match="has not been published"):
        store.fetch_dir("shards/x")
    source = store.local("shards/x")
    source.mkdir(parents=True)
    (source / "one.npy").write_bytes(b"1" * 100)
    (source / "meta.json").write_text('{"v": 1}')
    first = store.publish_dir("shards/x")

    # Another machine (another cache) sees the published files.
    elsewhere = ArtifactStore(store.root, s3, cache_dir=tmp_path / "b")
    got = elsewhere.fetch_dir("shards/x")
    assert (got / "meta.json").read_text() == '{"v": 1}' and (got / "one.npy").stat().st_size == 100

    # A publish that fails half-way (the second upload refused) leaves the first version current.
    (source / "meta.json").write_text('{"v": 2}')
    (source / "two.npy").write_bytes(b"2" * 10)
    real_put, calls = obstore.put, []

    def failing_put(s, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("connection reset by peer")
        return real_put(s, path, *args, **kwargs)

    obstore.put = failing_put
    try:
        with pytest.raises(OSError):
            store.publish_dir("shards/x")
    finally:
        obstore.put = real_put
    fresh = ArtifactStore(store.root, s3, cache_dir=tmp_path / "c").fetch_dir("shards/x")
    assert (fresh / "meta.json").read_text() == '{"v": 1}' and not (fresh / "two.npy").exists()

    second = store.publish_dir("shards/x")
    assert second != first
    got = elsewhere.fetch_dir("shards/x")  # the same cache: replaced whole
    assert (got / "meta.json").read_text() == '{"v": 2}' and (got / "two.npy").exists()
    keys = _objects(s3, "unit/shards/x")
    assert all(k.startswith(f"unit/shards/x/@{second}/") or k.endswith("CURRENT") for k in keys), keys

    store.delete("shards/x")
    assert not store.has_dir("shards/x") and _objects(s3, "unit/shards/x") == []


def test_file_fetch_follows_the_store(s3, tmp_path):
    writer = ArtifactStore(f"s3://{BUCKET}/unit", s3, cache_dir=tmp_path / "w")
    reader = ArtifactStore(writer.root, s3, cache_dir=tmp_path / "r")
    assert not reader.has_file("m/checkpoint.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reader.fetch_file("m/checkpoint.pt")
    path = writer.local("m/checkpoint.pt")
    path.parent.mkdir(parents=True)
    for content in (b"epoch 1", b"epoch 2"):  # same size: the ETag, not the size, says it changed
        path.write_bytes(content)
        writer.publish_file("m/checkpoint.pt")
        assert reader.fetch_file("m/checkpoint.pt").read_bytes() == content


def test_concurrent_writers_on_s3_keep_every_region_once(s3, tmp_path):
    """delta-rs commits on S3 with conditional writes (If-None-Match), so concurrent writers need no
    locking service: four processes, two per region, on a new table."""
    uri = warehouse.table_uri(f"s3://{BUCKET}/concurrent", "t")
    write_at_once(tmp_path, uri, ["a", "b", "a", "b"])
    assert_one_copy_per_region(warehouse.read_table(uri))
    assert_history_sound(uri, {"a", "b"})


def _materialize(defs, resources, instance, selection, partition=None, run_config=None):
    result = materialize_selection(defs, resources, instance, selection, partition, run_config)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


@pytest.mark.system
@pytest.mark.slow
def test_whole_graph_on_s3(s3, dagster_instance, tmp_path):
    root = f"s3://{BUCKET}/wh"
    defs = load_defs()
    resources = {**defs.resources, "warehouse": WarehouseResource(root=root, storage_options=s3)}
    run = functools.partial(_materialize, defs, resources, dagster_instance)
    levels = [LEVELS["image_level"], LEVELS["pixel_level"]]
    # In S2 shards, over two extraction steps: their records and rows pass through the bucket.
    sharded = {"levels": levels, "shard_mb": 0.1, "shard_steps": 2}
    features_run = run(
        ["osm_extract", "cell_features"], REGION, {"ops": {"cell_features": {"config": sharded}}}
    )
    assert (
        sum("cell_features_extract" in e.step_key for e in features_run.all_events if e.is_step_success) == 2
    )
    assert not _objects(s3, "wh/staging/")  # cleared once the region was written
    run(["raster_tensors"], REGION, {"ops": {"raster_tensors": {"config": LEVELS}}})
    model = run(["mae_model"], run_config={"ops": {"mae_model": {"config": TINY}}})
    run(["cell_embeddings"], REGION)

    objects = _objects(s3, "wh/")
    assert f"wh/rasters/{REGION}/CURRENT" in objects
    checkpoint = [k for k in objects if k.endswith("checkpoint.pt")]
    assert len(checkpoint) == 1 and checkpoint[0].startswith("wh/models/mae/")
    assert any(k.startswith("wh/cell_embeddings/_delta_log/") for k in objects)
    meta = model.asset_materializations_for_node("mae_model")[0].metadata
    assert meta["checkpoint_path"].value == f"{root}/{checkpoint[0].removeprefix('wh/')}"

    # Read back as a downstream team does: polars and DuckDB straight from the bucket.
    embeddings = pl.read_delta(warehouse.table_uri(root, "cell_embeddings"), storage_options=s3)
    version = registry.current(root, storage_options=s3)
    assert embeddings.height > 0 and set(embeddings["model_version"]) == {version}
    con = warehouse.duckdb_connect(s3)
    counted = con.execute(
        f"SELECT count(*) FROM delta_scan('{warehouse.table_uri(root, 'cell_features')}') WHERE region = ?",
        [REGION],
    ).fetchone()[0]
    features = pl.read_delta(warehouse.table_uri(root, "cell_features"), storage_options=s3)
    assert counted == features.height > 0

    # The shell's query commands take the same URI (credentials and endpoint from the environment).
    shell = subprocess.run(
        [sys.executable, "-m", "s2vec_assets.cli", "similar", "--warehouse", root, "--token"]
        + [embeddings.filter(pl.col("level") == LEVELS["image_level"])["token"][0], "--k", "3"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shell.returncode == 0, shell.stderr
    assert len(shell.stdout.splitlines()) == 3

    # A machine with an empty cache: rasters and checkpoint come back from the bucket, and a scoped
    # re-run of the embeddings replaces exactly this region's rows.
    os.environ["S2VEC_ARTIFACT_CACHE"] = str(tmp_path / "empty-cache")
    before = warehouse.table_version(warehouse.table_uri(root, "cell_embeddings"), s3)
    run(["cell_embeddings"], REGION)
    again = pl.read_delta(warehouse.table_uri(root, "cell_embeddings"), storage_options=s3)
    assert warehouse.table_version(warehouse.table_uri(root, "cell_embeddings"), s3) == before + 1
    assert (
        again.sort("level", "cell_id")
        .select("cell_id", "level")
        .equals(embeddings.sort("level", "cell_id").select("cell_id", "level"))
    )
    assert (tmp_path / "empty-cache").is_dir()

    report = run(
        ["evaluation_report"], REGION, {"ops": {"evaluation_report": {"config": {"learning_curves": False}}}}
    )
    uri = str(report.asset_materializations_for_node("evaluation_report")[0].metadata["report"].value)
    assert uri.startswith(f"{root}/reports/evaluation/")
    assert any(
        k.startswith("wh/reports/evaluation/") and k.endswith("report.md") for k in _objects(s3, "wh/")
    )

    # The secret is in no event, no metadata, no log line of any of these runs.
    for run_record in dagster_instance.get_runs():
        for entry in dagster_instance.all_logs(run_record.run_id):
            assert SECRET not in str(entry)
        assert SECRET not in str(run_record.run_config)
