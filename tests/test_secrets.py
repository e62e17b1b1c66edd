"""Secrets stay out of storage: a credential and a signed source URL planted in a real run are found
nowhere in the Dagster home (runs.db, event and compute logs), the warehouse (Delta logs, commit info)
or the captured output. Literal credentials in the resource config are refused."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import dagster as dg
import pytest

from s2vec_assets.definitions import defs as load_defs
from s2vec_assets.defs.resources import OsmSourceResource, WarehouseResource

REPO = Path(__file__).resolve().parents[1]
CREDENTIAL = "planted-credential-7f3a91"
SIGNATURE = "planted-signature-c0ffee"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    """The server's own access log would print the signed URL: it is the test's, not the product's."""

    def log_message(self, *args) -> None:
        pass


def _grep(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_literal_credentials_in_storage_options_are_refused():
    with pytest.raises(ValueError, match=r"look like credentials.*storage_options_from_env"):
        WarehouseResource(root="s3://bucket/wh", storage_options={"aws_secret_access_key": CREDENTIAL})
    plain = WarehouseResource(root="/tmp/wh", storage_options={"aws_region": "eu-central-1"})
    assert plain.options == {"aws_region": "eu-central-1"}
    from_env = WarehouseResource(
        root="/tmp/wh", storage_options_from_env={"aws_secret_access_key": "NOT_SET_X"}
    )
    with pytest.raises(dg.Failure, match="NOT_SET_X"):
        _ = from_env.options


@pytest.mark.slow
def test_a_planted_credential_and_signed_url_never_reach_storage_or_logs(
    dagster_instance, tmp_path, monkeypatch, capfd
):
    served = tmp_path / "served"
    served.mkdir()
    (served / "monaco.osm.pbf").write_bytes((REPO / "data/osm/monaco-2023.osm.pbf").read_bytes())
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/monaco.osm.pbf?X-Amz-Signature={SIGNATURE}"
        catalog = tmp_path / "regions.toml"
        catalog.write_text(f'[regions.monaco]\nsource = "{url}"\n')
        monkeypatch.setenv("S2VEC_TEST_CREDENTIAL", CREDENTIAL)
        warehouse = tmp_path / "warehouse"
        defs = load_defs()
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks],
            selection=["osm_extract", "cell_features"],
            partition_key="monaco",
            instance=dagster_instance,
            resources={
                **defs.resources,
                "warehouse": WarehouseResource(
                    root=str(warehouse),
                    storage_options_from_env={"aws_secret_access_key": "S2VEC_TEST_CREDENTIAL"},
                ),
                "osm_source": OsmSourceResource(catalog_path=str(catalog), cache_dir=str(tmp_path / "cache")),
            },
        )
    finally:
        server.shutdown()
    assert result.success
    meta = result.asset_materializations_for_node("osm_extract")[0].metadata
    assert meta["source"].value == url.split("?")[0]
    home = Path(dagster_instance.root_directory)
    out, err = capfd.readouterr()
    for needle in (CREDENTIAL, SIGNATURE):
        assert _grep(home, needle.encode()) == []
        assert _grep(warehouse, needle.encode()) == []
        assert needle not in out + err
    # The grep can see into these stores: the redacted URL, recorded as metadata, is found.
    assert _grep(home, url.split("?")[0].encode())
