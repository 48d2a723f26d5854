"""Entry point: ``python src/run.py scorer=adg pool=alpaca`` (see conf/config.yaml)."""
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works without `pip install -e .` too

from selectlab.config import configure_environment  # noqa: E402  (also registers the config resolvers)

configure_environment()  # offline defaults before datasets/transformers are imported

import hydra  # noqa: E402
from hydra.errors import HydraException  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from selectlab.infra import preemption  # noqa: E402
from selectlab.errors import USER_ERROR_EXIT_CODE, SelectlabError, config_error_line, one_line  # noqa: E402
from selectlab.pipeline import run  # noqa: E402


IN_JOB = []  # non-empty once a job has started: an error Hydra or OmegaConf raises from then on is a bug, not a config error


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("selectlab").setLevel(logging.INFO)
    preemption.install()  # SIGTERM / SIGUSR1: stop at the next safe point, keep everything, requeue
    IN_JOB.append(True)
    try:
        run(cfg)  # validate first: keys added with +, domains, cross-field checks
    except preemption.Preempted as stopped:
        preemption.hand_off(stopped)
    except SelectlabError as error:
        # A user error (bad value, bad file, missing model): what and where in one line, no traceback.
        # Caught here because Hydra would print a traceback for it; any other exception reaches
        # Hydra and keeps its traceback (all of it with HYDRA_FULL_ERROR=1).
        if os.environ.get("SELECTLAB_TRACEBACK") == "1":
            raise
        print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT_CODE)


def compose_and_run() -> None:
    """``main`` with Hydra's composition errors (a value of the wrong type, an unknown option or
    key, a malformed override) as one line and exit 2 like every user error, instead of Hydra's
    multi-line report and exit 1."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra raises them here instead of printing them
    try:
        main()
    except (HydraException, OmegaConfBaseException) as error:
        if IN_JOB or os.environ.get("SELECTLAB_TRACEBACK") == "1":
            raise
        print(f"error: {config_error_line(error)}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT_CODE)


if __name__ == "__main__":
    compose_and_run()
