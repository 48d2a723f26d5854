"""The judge (selectlab.lm.judge) and the release's classifier (analysis.complexity): the openai
backend against a real OpenAI-compatible HTTP server on the tiny model, the local likelihood
backend pinned on the tiny model, and the release's mapping of off-list answers."""
from __future__ import annotations

import hashlib
import math
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from fastapi import Request as HTTPRequest  # module level: FastAPI resolves the string annotation here

from analysis import complexity
from selectlab.lm.judge import JudgeError, answered_digit, classify, make_judge, release_category
from selectlab.infra.store import ArtifactStore

CATEGORIES = ["Math", "Knowledge", "Reasoning", "Writing", "Coding", "Summarization", "Translation",
              "Discrete_Decision", "Instruction_Following", "Others"]
RECORDS = [
    {"id": "a", "instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat, sleep, move."},
    {"id": "b", "instruction": "Summarize the text.", "input": "Rome grew, fought wars and built roads.",
     "output": "Rome expanded."},
    {"id": "c", "instruction": "Write a Python function that reverses a string.", "input": "",
     "output": "def rev(s):\n    return s[::-1]"},
]


def test_release_prompt_and_settings_verbatim():
    """conf/complexity.yaml holds analyse.py's prompts byte for byte (hash of the release's f-string
    with {instruction} unfilled), temperature 0.3, max_tokens 20 and the ten categories in order."""
    cfg = complexity.load_config()
    task = cfg["classification"]
    assert task["categories"] == CATEGORIES
    assert (task["temperature"], task["max_tokens"]) == (0.3, 20)
    assert hashlib.sha256(task["user"].encode()).hexdigest()[:16] == "b012323fa0122d34"
    assert task["system"] == ("You are an expert in classifying instructions. Always respond with only one "
                              "category name from the given list.")
    assert list(cfg["ratings"]) == ["cognitive_complexity", "instruction_precision", "educational_value"]
    assert cfg["judge"]["kind"] == "local"


@pytest.mark.parametrize("answer, category", [
    ("Coding", "Coding"),
    ("  Math\n", "Math"),                      # stripped, then on the list
    ("coding", "Coding"),                      # case differs: "coding" is contained in "coding"
    ("Category: Discrete_Decision.", "Discrete_Decision"),   # the name is contained in the answer
    ("Summar", "Summarization"),               # the answer is contained in a name
    ("Translation / Writing", "Writing"),      # several names inside: the first in list order wins
    ("Poetry", "Others"),                      # nothing matches
    ("", "Math"),                              # the release's quirk: "" is in every name -> the first
])
def test_release_category(answer, category):
    assert release_category(answer, CATEGORIES) == category


def test_answered_digit():
    assert answered_digit("Rating: 4 (of 6)", range(1, 7)) == 4.0
    assert answered_digit("7 then 2", range(1, 7)) == 2.0  # 7 is off the scale
    assert math.isnan(answered_digit("high", range(1, 7)))


# ---- a real OpenAI-compatible server on this machine ---------------------------------------

@dataclass
class ServerLog:
    fail_with: list[int] = field(default_factory=list)   # statuses for the next requests, then answers
    bodies: list[dict] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)   # last user message -> generated text


def chat_completions_app(model_dir, log: ServerLog):
    """POST /v1/chat/completions on the tiny model: the chat template, greedy generation of up to
    max_tokens tokens (temperature is recorded, not used), OpenAI's response and error shapes."""
    import torch
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: HTTPRequest):  # async: requests run one at a time on the event loop
        body = await request.json()
        log.bodies.append(body)
        log.auth.append(request.headers.get("authorization", ""))
        if log.fail_with:
            status = log.fail_with.pop(0)
            return JSONResponse({"error": {"message": f"injected {status}", "type": "server_error", "code": status}},
                                status_code=status)
        if body["model"] != "tiny":
            return JSONResponse({"error": {"message": f"model {body['model']} does not exist",
                                           "type": "NotFoundError", "code": 404}}, status_code=404)
        text = tok.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=int(body["max_tokens"]),
                                 do_sample=False, pad_token_id=tok.eos_token_id)
        answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        log.answers[body["messages"][-1]["content"]] = answer
        return {"id": f"chatcmpl-{len(log.bodies)}", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                             "finish_reason": "length"}],
                "usage": {"prompt_tokens": ids.shape[1], "completion_tokens": out.shape[1] - ids.shape[1],
                          "total_tokens": out.shape[1]}}

    return app


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """(base_url, log) of a uvicorn server on a free local port, in a thread, for this module."""
    import uvicorn

    log = ServerLog()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(chat_completions_app(tiny_model_dir, log), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "the test server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", log
    srv.should_exit = True
    thread.join(timeout=10)


def _openai_config(base_url: str, *extra: str) -> dict:
    return complexity.load_config(["judge=openai", f"judge.base_url={base_url}", "judge.model=tiny",
                                   "judge.api_key_env=SELECTLAB_TEST_JUDGE_KEY", "judge.backoff_s=0.01",
                                   "judge.concurrency=2", "judge.batch_size=2", *extra])


def test_openai_judge_end_to_end(server, tmp_path, monkeypatch):
    """The release's classifier and the ratings through the openai client over HTTP: the request
    carries the release's prompts and settings, a 500 and a 429 are retried, the tiny model's
    off-list answers are mapped as the release maps them, and a second pass asks nothing."""
    base_url, log = server
    monkeypatch.setenv("SELECTLAB_TEST_JUDGE_KEY", "sk-test-123")
    cfg = _openai_config(base_url)
    store = ArtifactStore(tmp_path / "cache")
    judge = make_judge(cfg["judge"], store)
    log.bodies.clear()
    log.fail_with[:] = [500, 429]
    subsets = {"top": RECORDS[:2], "uniform": RECORDS[1:]}   # "b" in both: asked once
    frame, counts = complexity.judge_frame(subsets, cfg, store, judge)

    assert judge.retries == 2
    assert len(log.bodies) == 2 + 3 * 4   # two failed attempts, then 3 examples x (classify + 3 ratings)
    assert set(log.auth) == {"Bearer sk-test-123"}  # the key from the named environment variable
    classify_bodies = [b for b in log.bodies if b["messages"][0]["content"].startswith("You are an expert in classifying")]
    assert len(classify_bodies) == 3 + 2  # the two failures were classification requests (sent first)
    body = classify_bodies[-1]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("tiny", 0.3, 20)
    user = body["messages"][1]["content"]
    assert user.startswith("Please classify the following instruction into ONE of these categories:\n\nCategories:\n- Math:")
    assert "\n\nInstruction: " in user and user.endswith('(e.g., "Math" or "Coding"). No other text.')

    assert frame["subset"].tolist() == ["top", "top", "uniform", "uniform"]
    assert frame["id"].tolist() == ["a", "b", "b", "c"]
    task = cfg["classification"]
    for record in RECORDS:
        answer = log.answers[task["user"].format(instruction=record["instruction"])]
        expected = release_category(answer, CATEGORIES)
        assert set(frame.loc[frame["id"] == record["id"], "category"]) == {expected}
    answers = [log.answers[task["user"].format(instruction=r["instruction"])] for r in RECORDS]
    assert counts["classification/off_list_answer"] == sum(a.strip() not in CATEGORIES for a in answers) >= 1
    # ratings: the first digit 1-6 of the free answer, NaN when it has none (counted)
    rating = cfg["ratings"]["cognitive_complexity"]
    for record in RECORDS:
        text = log.answers[rating["user"].format_map(complexity.prompt_fields(record, 4000))]
        got = frame.loc[frame["id"] == record["id"], "cognitive_complexity"].iloc[0]
        assert got == pytest.approx(answered_digit(text, range(1, 7)), nan_ok=True)

    sent = len(log.bodies)
    again, _ = complexity.judge_frame(subsets, cfg, store, make_judge(cfg["judge"], store))
    assert len(log.bodies) == sent and again.equals(frame)  # every answer cached per (prompt, model)


def test_openai_judge_errors(server, tmp_path, monkeypatch):
    """A wrong model name fails at once, naming the config keys; retries running out raise
    after the answers of earlier batches are stored, and a rerun resumes from them."""
    base_url, log = server
    store = ArtifactStore(tmp_path / "cache")
    monkeypatch.delenv("SELECTLAB_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(JudgeError, match="SELECTLAB_TEST_JUDGE_KEY is not set"):
        make_judge(_openai_config(base_url)["judge"], store)

    monkeypatch.setenv("SELECTLAB_TEST_JUDGE_KEY", "sk-test-123")
    cfg = _openai_config(base_url, "judge.model=nope")
    with pytest.raises(JudgeError, match="NotFoundError.*judge.model"):
        complexity.judge_frame({"s": RECORDS[:1]}, cfg, store)

    cfg = _openai_config(base_url, "judge.max_retries=1", "judge.concurrency=1", "judge.batch_size=1")
    requests = complexity.task_requests(RECORDS, cfg["classification"], CATEGORIES, None)
    judge = make_judge(cfg["judge"], store)
    log.bodies.clear()
    log.answers.clear()
    classify(judge, requests[:1], store)          # the first request answered and stored
    log.fail_with[:] = [503, 503]
    with pytest.raises(JudgeError, match="still failing after 1 retries"):
        classify(judge, requests, store, batch_size=1)
    log.bodies.clear()
    labels, _ = classify(judge, requests, store, batch_size=1)
    assert len(log.bodies) == 2 and len(labels) == 3  # resumed: only the two unanswered were asked


# ---- the local likelihood judge ------------------------------------------------------------

def test_local_judge_on_tiny_model(tiny_model_dir, tmp_path):
    """Each category's log-likelihood (prompt run once, options continuing its cache) equals a
    full forward pass of prompt + option; the category is the argmax; a rating is the expected
    value over the six digits; both pinned on the seeded tiny model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = complexity.load_config(["judge=local", f"judge.model.path={tiny_model_dir}", "judge.model.name=tiny",
                                  "judge.batch_size=2"])
    store = ArtifactStore(tmp_path / "cache")
    frame, counts = complexity.judge_frame({"all": RECORDS}, cfg, store)

    assert set(frame["category"]) <= set(CATEGORIES) and frame["category"].notna().all()
    ratings = frame[list(cfg["ratings"])].to_numpy()
    assert ((ratings >= 1) & (ratings <= 6)).all()
    assert counts["cognitive_complexity/no_rating_in_answer"] == 0

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()

    def by_hand(task: dict, record: dict, options: list[str]) -> np.ndarray:
        fields = complexity.prompt_fields(record, cfg["max_field_chars"])
        messages = [{"role": "system", "content": task["system"]},
                    {"role": "user", "content": task["user"].format_map(fields)}]
        prompt = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
        out = []
        for option in options:
            ids = tok(option, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([prompt + ids])).logits[0].double(), -1)
            out.append(sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(ids)))
        return np.array(out)

    lp = by_hand(cfg["classification"], RECORDS[2], CATEGORIES)
    assert frame["category"].iloc[2] == CATEGORIES[int(np.argmax(lp))]
    raw = store.meta("judge_answers", store.key("judge_answers", 1, judge=make_judge(cfg["judge"], store).identity(),
                     request=complexity.task_requests(RECORDS[2:], cfg["classification"], CATEGORIES,
                                                      cfg["max_field_chars"])[0].content()))["answer"]
    assert np.allclose(raw["logprobs"], lp, atol=1e-6)

    digits = by_hand(cfg["ratings"]["cognitive_complexity"], RECORDS[0], [str(s) for s in range(1, 7)])
    p = np.exp(digits - digits.max())
    assert frame["cognitive_complexity"].iloc[0] == pytest.approx(float(p @ np.arange(1, 7)) / p.sum(), abs=1e-9)

    # pinned: seeded tiny model (conftest.build_tiny_llama)
    assert frame["category"].tolist() == PINNED_CATEGORIES
    assert np.allclose(ratings, PINNED_RATINGS, atol=1e-4)


# The seeded tiny model prefers the one-token name "Math" everywhere (a random model: the summed
# log-likelihood favours short names) and rates everything near the scale's middle.
PINNED_CATEGORIES = ["Math", "Math", "Math"]
PINNED_RATINGS = [[3.33369, 3.32773, 3.35350],   # a: cognitive_complexity, instruction_precision, educational_value
                  [3.33864, 3.33393, 3.35981],   # b
                  [3.32850, 3.32254, 3.34522]]   # c
