"""The s2vec code location: everything under `s2vec_assets/defs/`, found by Dagster's defs loader.

`dagster dev` (workspace.yaml), `dagster asset materialize -m s2vec_assets.definitions` and
`python -m s2vec_assets.run` all load this.

Executor (how a run executes its steps), chosen by `S2VEC_EXECUTOR` where the code location loads:

- `in_process` (default): every step of a run in the run's own process. Local runs (`make dev`,
  `dagster asset materialize`) then import dagster, torch and Great Expectations once per run, not
  once per step, and are about as fast as `make run`.
- `multiprocess`: one subprocess per step, steps in parallel (run config
  `execution: {config: {max_concurrent: N}}`); for production code locations, where steps are
  long and a crashed step should not take the run worker with it.
- `k8s`: one Kubernetes pod per step (dagster-k8s's `k8s_job_executor`, under its `K8sRunLauncher`):
  a large region's extraction steps (`cell_features`' `shard_steps`) then run on as many machines
  (deploy/k8s/large_region_run_config.yaml).
"""

from pathlib import Path

import dagster as dg

from s2vec_core import settings

EXECUTORS = {"in_process": dg.in_process_executor, "multiprocess": dg.multiprocess_executor}
DEFAULT_EXECUTOR = "in_process"


K8S = "k8s"


def executor() -> dg.ExecutorDefinition:
    """The executor `S2VEC_EXECUTOR` names (default in_process)."""
    name = settings.executor() or DEFAULT_EXECUTOR
    if name == K8S:
        # Imported only here: dagster-k8s is in the deployment image (deploy/k8s/Dockerfile), not a
        # dependency of every install.
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if name not in EXECUTORS:
        raise ValueError(f"S2VEC_EXECUTOR must be one of {sorted([*EXECUTORS, K8S])}, got {name!r}")
    return EXECUTORS[name]


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).resolve().parent),
        dg.Definitions(executor=executor()),
    )
