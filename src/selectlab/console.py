"""What a run prints: selectlab's own INFO lines and every WARNING on the console; the engines' and
libraries' INFO lines (vLLM, lm-eval, httpx, ...) in ``<run_dir>/run.log`` only.

Hydra's job logging (conf/hydra/job_logging/selectlab.yaml) puts :class:`ConsoleFilter` on the
console handler. vLLM configures its own logger (a stdout handler, not propagated) in every process,
including the engine core it spawns, from the environment: :func:`route_engine_logs` gives it a
logging config (``VLLM_LOGGING_CONFIG_PATH``) that appends its INFO lines to the run's log and shows
its warnings on stderr.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

# selectlab loggers whose INFO lines are bookkeeping (artifact reuse, batch done): the run's log only;
# the end-of-run summary gives each stage's time.
FILE_ONLY = ("selectlab.store",)
VLLM_CONFIG_NAME = ".vllm_logging.json"


class ConsoleFilter(logging.Filter):
    """Warnings and errors from anyone; INFO from selectlab (and the entry point) only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        ours = record.name == "__main__" or record.name == "selectlab" or record.name.startswith("selectlab.")
        return ours and not record.name.startswith(FILE_ONLY)


def vllm_logging_config(log_file: Path) -> dict:
    """vLLM's loggers: INFO and up appended to ``log_file``, warnings also on stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"simple": {"format": "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "formatter": "simple", "filename": str(log_file), "mode": "a",
                     "level": "INFO"},
            "console": {"class": "logging.StreamHandler", "formatter": "simple", "stream": "ext://sys.stderr",
                        "level": "WARNING"},
        },
        "loggers": {"vllm": {"handlers": ["file", "console"], "level": "INFO", "propagate": False}},
    }


def route_engine_logs(run_dir: Path) -> None:
    """Send vLLM's log lines (this process and the engine processes it starts) to ``<run_dir>/run.log``.
    A logging setup of the user's own (VLLM_LOGGING_CONFIG_PATH elsewhere, VLLM_CONFIGURE_LOGGING=0) wins."""
    current = os.environ.get("VLLM_LOGGING_CONFIG_PATH")
    if (current and Path(current).name != VLLM_CONFIG_NAME) or os.environ.get("VLLM_CONFIGURE_LOGGING") == "0":
        return
    path = Path(run_dir) / VLLM_CONFIG_NAME
    path.write_text(json.dumps(vllm_logging_config(Path(run_dir).resolve() / "run.log"), indent=2))
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(path.resolve())
