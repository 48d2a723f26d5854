"""Entry point: ``python src/run.py scorer=adg pool=alpaca`` (see conf/config.yaml)."""
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works without `pip install -e .` too

import selectlab.config  # noqa: E402,F401  (registers the ${data_dir:} and ${cache_dir:} resolvers)
from selectlab.pipeline import configure_environment, run  # noqa: E402


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    configure_environment()
    logging.getLogger("selectlab").setLevel(logging.INFO)
    run(cfg)


if __name__ == "__main__":
    main()
