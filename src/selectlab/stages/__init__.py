"""The stages of a run, each one cached artifact of the store (``selectlab.infra.store``):

``scoring`` (pool -> scores), ``selection`` (scores -> subsets; a size search is its own stage in
``size_search``), ``evaluation`` (fine-tune -> lm-eval and held-out loss) and ``compare`` (the
results rows: the selection beside the untrained and random baselines, per seed). ``fit_rule``
is InstructMining's other task. ``selectlab.pipeline`` runs them in order; each takes the
:class:`~selectlab.context.RunContext` and returns plain values.
"""
