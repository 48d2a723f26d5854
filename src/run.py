"""Entry point: ``python src/run.py scorer=adg pool=alpaca`` (see conf/config.yaml)."""
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works without `pip install -e .` too

from selectlab.config import configure_environment  # noqa: E402  (also registers the config resolvers)

configure_environment()  # offline defaults before datasets/transformers are imported

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from selectlab.pipeline import run  # noqa: E402


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("selectlab").setLevel(logging.INFO)
    run(cfg)


if __name__ == "__main__":
    main()
