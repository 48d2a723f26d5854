"""The papers' published numbers, as data with provenance (transcribed in the project's docs/methods.md).

Figures draw these beside our own runs; nothing here is computed.
"""
from __future__ import annotations

import pandas as pd

ADG_SOURCE = "ADG paper (arXiv 2604.10448, ACL 2026), as transcribed in docs/methods.md §1"
INSTRUCTMINING_SOURCE = "InstructMining paper (arXiv 2307.06290), as transcribed in docs/methods.md §2"

# Reason / Know / Code / Avg, 10K budget, LLaMA3-8B backbone.
_MAIN = {
    ("Random", "alpaca_gpt4"): (42.81, 57.07, 38.30, 46.06),
    ("Random", "wizardlm"): (48.38, 56.89, 38.81, 48.03),
    ("Random", "cot"): (39.58, 47.00, 29.38, 38.65),
    ("SuperFiltering", "alpaca_gpt4"): (46.80, 58.46, 42.93, 49.39),
    ("SuperFiltering", "wizardlm"): (51.09, 57.87, 42.11, 50.35),
    ("SuperFiltering", "cot"): (44.89, 49.04, 38.19, 44.03),
    ("ADG", "alpaca_gpt4"): (50.11, 60.31, 42.14, 50.85),
    ("ADG", "wizardlm"): (52.53, 57.61, 45.06, 51.73),
    ("ADG", "cot"): (45.05, 50.99, 39.30, 45.11),
}

# Ablations on Alpaca-GPT4 / LLaMA3-8B (Avg). Layer windows are decoder-layer numbers of a
# 32-layer model; 28-31 and K=5 are the paper's defaults (Avg 50.85, the main-table value).
ADG_ABLATIONS = {
    "layers": [("0-3", 46.28), ("16-19", 49.10), ("24-27", 49.70), ("28-31", 50.85)],
    "k": [(3, 49.32), (5, 50.85), (7, 46.79), (10, 45.72)],
}

INSTRUCTMINING_SIZE_SEARCH = {"best_n": 2532, "pool_n": 100_000, "search": "blendsearch",
                              "openllm_gain_over_base": 4.9, "source": INSTRUCTMINING_SOURCE}


def adg_main_table() -> pd.DataFrame:
    """One row per (method, pool): Reasoning, Knowledge, Code, Avg in percent."""
    rows = [{"method": m, "pool": p, "backbone": "llama3_8b", "budget": 10_000,
             "Reasoning": r, "Knowledge": k, "Code": c, "Avg": a, "source": ADG_SOURCE}
            for (m, p), (r, k, c, a) in _MAIN.items()]
    return pd.DataFrame(rows)


def adg_ablation(knob: str) -> pd.DataFrame:
    """``knob``: ``layers`` or ``k``; columns value, Avg, source."""
    if knob not in ADG_ABLATIONS:
        raise KeyError(f"no published ADG ablation for {knob!r}; known: {sorted(ADG_ABLATIONS)}")
    return pd.DataFrame([{"value": v, "Avg": a, "source": ADG_SOURCE} for v, a in ADG_ABLATIONS[knob]])


def adg_random_avg(pool: str) -> float:
    """The paper's random row (Avg) on ``pool``, the baseline its ablations are read against."""
    return {p: a for (m, p), (_, _, _, a) in _MAIN.items() if m == "Random"}[pool]
