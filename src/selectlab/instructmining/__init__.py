"""InstructMining (docs/methods.md §2): indicators, linear rules, rule fitting, subset-size search (the math;
the workflows that fine-tune, task=fit_rule and the size search, are stages: ``selectlab.stages``).

The scorer that ties them to a run is ``selectlab.scorers.instructmining``.
"""
from .fit import fit_experiment, fit_rule, save_rule_yaml
from .rules import RuleError, predicted_loss, validate_rule
from .search import search_subset_size

__all__ = ["fit_experiment", "fit_rule", "save_rule_yaml", "RuleError", "predicted_loss", "validate_rule",
           "search_subset_size"]
