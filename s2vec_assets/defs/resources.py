"""Resources: where the warehouse lives, where OSM extracts come from, which device trains.

Defaults give the embedded setup (local Delta tables under `<repo>/warehouse`, the bundled catalog,
CPU unless a GPU is present); everything else is configuration, through environment variables or the
resource config in the Launchpad.

- `S2VEC_WAREHOUSE`: warehouse root, a directory or an object-store URI (`s3://bucket/prefix`). Object
  stores take plain options (endpoint, region) in `storage_options` and credentials only from the
  environment: the standard AWS_* / AZURE_* / GOOGLE_* variables, or `storage_options_from_env` naming
  the variable per option. A literal credential is refused: it would sit in plain text in runs.db.
- `S2VEC_CATALOG`: regions catalog (also decides the partitions, see `partitions.py`).
- `S2VEC_CACHE`: where downloaded extracts are cached (default `~/.cache/s2vec/osm`).
- `S2VEC_ARTIFACT_CACHE`: local copies of the rasters and checkpoints of an object-store warehouse
  (default `~/.cache/s2vec/artifacts`; see s2vec_core.artifacts).
- `S2VEC_DEVICE`: `auto` (CUDA if available, else CPU), `cpu`, `cuda` or `cuda:N`.
"""

import json
import os
import re
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field, field_validator

from s2vec_core import registry, settings, warehouse
from s2vec_core.artifacts import ArtifactStore, staging_key
from s2vec_core.catalog import Region, default_catalog_path, get_region, load_catalog, resolve_source
from s2vec_core.tables import TableSpec

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_warehouse_root() -> str:
    return warehouse.default_root()


def default_cache_dir() -> str:
    return str(settings.osm_cache_dir())


CREDENTIAL_OPTION = re.compile(r"secret|password|token|credential|private|key|sas", re.IGNORECASE)
"""Storage option names that hold credentials (aws_secret_access_key, azure_storage_account_key, ...)."""


class WarehouseResource(dg.ConfigurableResource):
    """The Delta warehouse: one table per name under `root`, written one partition at a time."""

    root: str = Field(description="Directory or object-store URI holding the Delta tables.")
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "deltalake storage options that are not secrets (endpoint, region, allow_http, conditional_put, "
            "locking provider). Credentials: `storage_options_from_env`, or the standard AWS_* / AZURE_* / "
            "GOOGLE_* environment variables, which deltalake reads itself."
        ),
    )
    storage_options_from_env: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Storage option -> name of the environment variable that holds it, read when a table is opened: "
            "the value never enters the run config, runs.db, metadata or logs."
        ),
    )

    @field_validator("storage_options")
    @classmethod
    def _no_literal_credentials(cls, options: dict[str, str]) -> dict[str, str]:
        secret = sorted(k for k in options if CREDENTIAL_OPTION.search(k))
        if secret:
            raise ValueError(
                f"storage_options {secret} look like credentials: a literal value would be stored in plain "
                "text in the run config (runs.db) and shown in the Launchpad. Name the environment variable "
                f"instead (storage_options_from_env: {{{secret[0]}: MY_ENV_VAR}}), or export the standard "
                "variable (e.g. AWS_SECRET_ACCESS_KEY), which deltalake reads itself."
            )
        return options

    def table_uri(self, name: str) -> str:
        return warehouse.table_uri(self.root, name)

    def write_partition(
        self,
        df: pl.DataFrame,
        name: str,
        partition: dict[str, str | int],
        description: str | None = None,
        commit: dict[str, str] | None = None,
        facts: dict[str, object] | None = None,
        row_group_rows: int | None = None,
        add_columns: bool = False,
        spec: TableSpec | None = None,
    ) -> int:
        """Replace `partition`'s rows of table `name` with `df`; returns the new Delta version. `commit`
        (run id, asset, region, model version) goes into the Delta commit info; `spec` (the table's, from
        s2vec_core.tables) refuses a frame whose columns, dtypes or partition keys differ from it."""
        return warehouse.write_partition(
            df,
            self.table_uri(name),
            partition,
            storage_options=self.options,
            description=description,
            commit=commit,
            facts=facts,
            row_group_rows=row_group_rows,
            add_columns=add_columns,
            spec=spec,
        )

    def model_version(self, pin: str | None = None) -> str | None:
        """The embeddings readers read: `pin`, else the current version (see registry.resolve); None if
        cell_embeddings holds none yet. Raises registry.VersionError when that is ambiguous."""
        if not registry.embedded_versions(self.root, storage_options=self.options):
            return None
        return registry.resolve(self.root, pin, storage_options=self.options)

    def read(
        self, name: str, filters: dict[str, str | int] | None = None, columns: list[str] | None = None
    ) -> pl.DataFrame:
        return warehouse.read_table(
            self.table_uri(name), filters, storage_options=self.options, columns=columns
        )

    def scan(
        self,
        name: str,
        filters: dict[str, str | int] | None = None,
        columns: list[str] | None = None,
        version: int | None = None,
        cell_range: tuple[int, int] | None = None,
    ) -> pl.LazyFrame:
        """Table `name` lazily (see `warehouse.scan_table`): at `version`, within an S2 `cell_range`."""
        return warehouse.scan_table(self.table_uri(name), filters, self.options, columns, version, cell_range)

    def version(self, name: str) -> int | None:
        return warehouse.table_version(self.table_uri(name), storage_options=self.options)

    @property
    def artifacts(self) -> ArtifactStore:
        """Raster shards, checkpoints and reports under the same root (local copies cached on object stores)."""
        return ArtifactStore(self.root, self.options)

    @property
    def options(self) -> dict[str, str] | None:
        """The storage options deltalake gets: the plain ones plus those read from the environment now."""
        missing = sorted(v for v in self.storage_options_from_env.values() if v not in os.environ)
        if missing:
            raise dg.Failure(
                f"the warehouse at {self.root} takes storage options from the environment variables "
                f"{missing}, which are not set in this process: export them where Dagster runs (the "
                "webserver, the daemon and run workers) and launch again."
            )
        env = {option: os.environ[var] for option, var in self.storage_options_from_env.items()}
        return {**self.storage_options, **env} or None


class OsmSourceResource(dg.ConfigurableResource):
    """Where each region's OSM extract comes from: the catalog, plus a download cache for URLs."""

    catalog_path: str = Field(description="regions.toml; must be the catalog the partitions were built from.")
    cache_dir: str = Field(description="Downloaded extracts are cached here, keyed by URL.")
    download_timeout_s: float = Field(default=120.0, gt=0, description="Socket timeout of a download.")

    def region(self, name: str) -> Region:
        return get_region(name, load_catalog(self.catalog_path))

    def resolve(self, name: str) -> Path:
        """Local path of the region's extract (downloaded once if the catalog gives a URL)."""
        return resolve_source(self.region(name), self.cache_dir, timeout_s=self.download_timeout_s)


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class DeviceResource(dg.ConfigurableResource):
    """Which torch device model assets use; `auto` picks CUDA when available, else CPU."""

    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    def resolve(self) -> str:
        """The concrete torch device string, by the trainer's own rule (imports torch only when called)."""
        from s2vec_core.train import select_device

        return str(select_device(self.device))


STEP_RECORDS = "steps"
"""The staging name (`artifacts.staging_key`) of the step records."""


class StepRecordsIOManager(dg.IOManager):
    """Small JSON records one step hands the next within an asset (which shards, where their rows are
    staged), kept in the warehouse's artifact store: Dagster's default IO manager writes to the local
    disk of the step's process, which a step in another pod (the k8s executor) cannot read."""

    def __init__(self, warehouse: WarehouseResource) -> None:
        self.warehouse = warehouse

    @staticmethod
    def key(context: dg.OutputContext | dg.InputContext, identifier: list[str]) -> str:
        # Under the run's partition, so a successful write of a region can clear its records.
        partition = context.partition_key if context.has_partition_key else "unpartitioned"
        return "/".join([staging_key(STEP_RECORDS, partition), *identifier]) + ".json"

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        key = self.key(context, context.get_identifier())
        path = self.warehouse.artifacts.local(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))
        self.warehouse.artifacts.publish_file(key)

    def load_input(self, context: dg.InputContext) -> object:
        key = self.key(context, context.upstream_output.get_identifier())
        return json.loads(self.warehouse.artifacts.fetch_file(key).read_text())


@dg.io_manager(required_resource_keys={"warehouse"})
def step_records_io_manager(init_context: dg.InitResourceContext) -> StepRecordsIOManager:
    # By resource key, not a nested resource: a run that swaps `warehouse` moves the records with it.
    return StepRecordsIOManager(init_context.resources.warehouse)


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(
        resources={
            "warehouse": WarehouseResource(root=default_warehouse_root()),
            "osm_source": OsmSourceResource(
                catalog_path=str(default_catalog_path()), cache_dir=default_cache_dir()
            ),
            "device": DeviceResource(device=settings.device()),
            # Launches torchrun for mae_model's distributed training (nproc_per_node > 1).
            "pipes_subprocess_client": dg.PipesSubprocessClient(),
            "step_records": step_records_io_manager,
        }
    )
