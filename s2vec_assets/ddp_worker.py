"""What torchrun starts for mae_model's distributed training: `s2vec_core.ddp` with each epoch reported
to the Dagster run through dagster-pipes. Only rank 0 talks to Dagster (one message stream per run);
every rank's stdout and stderr reach the run's logs through the Pipes client anyway."""

from __future__ import annotations

import os

from s2vec_core import ddp
from s2vec_core.train import baseline_ratio


def main(argv: list[str] | None = None) -> None:
    if os.environ.get("RANK", "0") != "0" or "DAGSTER_PIPES_CONTEXT" not in os.environ:
        ddp.main(argv)
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:

        def report(epoch: int, loss: float, holdout: dict[str, float]) -> None:
            held = f", held-out {baseline_ratio(holdout):.3f} of mean-of-visible" if holdout else ""
            pipes.log.info(f"epoch {epoch}: loss {loss:.5f}{held} ({os.environ['WORLD_SIZE']} processes)")

        ddp.main(argv, on_epoch_end=report)


if __name__ == "__main__":
    main()
