"""What a run prints: selectlab's own INFO lines and every WARNING on the console; the engines' and
libraries' INFO lines (vLLM, lm-eval, httpx, ...) in ``<run_dir>/run.log`` only.

Hydra's job logging (conf/hydra/job_logging/selectlab.yaml) puts :class:`ConsoleFilter` on the
console handler. vLLM configures its own logger (a stdout handler, not propagated) in every process,
including the engine core it spawns, from the environment: :func:`route_engine_logs` gives it a
logging config (``VLLM_LOGGING_CONFIG_PATH``) that appends its lines to the run's log and shows its
errors on stderr. vLLM's warnings go to run.log only (the summary counts them): on the CPU demo they are
about twenty lines of engine notes repeated by each of its processes ("Enforce eager set", "Triton is not
installed", "[shutdown] force killing ..."), most caused by settings chosen on purpose;
``VLLM_LOGGING_LEVEL=WARNING`` shows them on the console again.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

# selectlab loggers whose INFO lines are bookkeeping (artifact reuse, batch done): the run's log only;
# the end-of-run summary gives each stage's time.
FILE_ONLY = ("selectlab.infra.store",)
VLLM_CONFIG_NAME = ".vllm_logging.json"


class ConsoleFilter(logging.Filter):
    """Warnings and errors from anyone; INFO from selectlab (and the entry point) only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        ours = record.name == "__main__" or record.name == "selectlab" or record.name.startswith("selectlab.")
        return ours and not record.name.startswith(FILE_ONLY)


def vllm_logging_config(log_file: Path, console_level: str = "ERROR") -> dict:
    """vLLM's loggers: INFO and up appended to ``log_file``; ``console_level`` and up also on stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"simple": {"format": "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "formatter": "simple", "filename": str(log_file), "mode": "a",
                     "level": "INFO"},
            "console": {"class": "logging.StreamHandler", "formatter": "simple", "stream": "ext://sys.stderr",
                        "level": console_level},
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
    console_level = os.environ.get("VLLM_LOGGING_LEVEL", "ERROR").upper()
    path.write_text(json.dumps(vllm_logging_config(Path(run_dir).resolve() / "run.log", console_level), indent=2))
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(path.resolve())
    # vLLM's engine processes import a module that trips a torch deprecation (4 lines of FutureWarning that
    # no user can act on); the filter reaches only processes started from now on, and only that module
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning:vllm.triton_utils.dispatcher")


def engine_warnings(log_file: Path) -> int:
    """How many of vLLM's warnings ``log_file`` holds (they are not shown on the console)."""
    if not Path(log_file).is_file():
        return 0
    with open(log_file, encoding="utf-8", errors="replace") as f:
        return sum(1 for line in f if "][vllm" in line and "][WARNING]" in line)
