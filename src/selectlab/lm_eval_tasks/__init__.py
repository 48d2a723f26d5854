"""Offline lm-evaluation-harness task configs (pass this folder as ``include_path``).

The YAMLs copy the prompts, filters and metrics of lm-eval 0.4.13's own tasks; only the
data source differs: ``custom_dataset`` loaders in ``utils.py`` read the benchmark files
under ``selectlab.infra.paths.data_dir()`` at run time, in the schema of the Hub dataset that the
harness's task expects. ``bbh/`` and ``mmlu/`` are written by ``_generate_configs.py``.
"""
