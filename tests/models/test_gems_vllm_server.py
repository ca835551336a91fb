"""The GEMS beam against a vLLM OpenAI-compatible server (models.gems.vllm.VLLMServerItemGenerator): the wire
format only, against a small local HTTP server that scores tokens by a fixed rule (no GPU, no vllm here). The same
rule scored in-process through the one beam search (decode_items) must give the same items and scores."""
from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from models.docids import DocIDs
from models.gems.item_ids import ItemVocab, decode_items
from models.gems.vllm import VLLMServerItemGenerator, beam_requests


def rule(prompt: list[int], token: int) -> float:
    """The fake server's log-probability of `token` after `prompt` (depends on both, like a model's)."""
    return -((sum(prompt) * 31 + token * 7) % 17) / 4.0


class FakeVLLM(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeVLLM.requests.append({"path": self.path, **body})
        choices = [{"index": i, "text": "", "logprobs": {"top_logprobs": [
            {f"token_id:{t}": rule(p, t) for t in body["allowed_token_ids"]}]}} for i, p in enumerate(body["prompt"])]
        data = json.dumps({"object": "text_completion", "choices": choices}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeVLLM)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    FakeVLLM.requests = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from models.settings import runtime_settings

    return AutoTokenizer.from_pretrained(runtime_settings().lm_dir)


def test_server_beam_matches_the_in_process_beam_and_speaks_vllms_format(server, tokenizer):
    rng = np.random.default_rng(0)
    codes = np.unique(rng.integers(0, 6, size=(40, 3)), axis=0)
    vocab = ItemVocab(DocIDs(codes, [f"item{n}" for n in range(len(codes))], 6), first_token=len(tokenizer))
    prompts = ["Recommend a film after: Heat, Ran", "Search: animation comedy 1990s"]
    got = VLLMServerItemGenerator(server, tokenizer, vocab).generate("recommend", prompts, beam=4, k=3)

    base_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]

    def local(qidx: np.ndarray, tokens: torch.Tensor) -> torch.Tensor:
        level, beams = beam_requests(vocab, base_ids, qidx, tokens)
        out = torch.full((len(beams), vocab.length, vocab.vocab), -math.inf)
        lo = vocab.first_token + level * vocab.vocab
        for r, (ids, allowed) in enumerate(beams):
            for t in allowed:
                out[r, level, t - lo] = rule(ids, t)
        return out

    want = decode_items(vocab, local, len(prompts), 4, 3)
    assert [[i for i, _ in g] for g in got] == [[i for i, _ in w] for w in want]
    assert np.allclose([s for g in got for _, s in g], [s for w in want for _, s in w])
    assert all(len(g) == 3 for g in got)
    reqs = FakeVLLM.requests
    assert reqs and all(r["path"] == "/v1/completions" and r["model"] == "recommend" and r["max_tokens"] == 1
                        and r["temperature"] == 0.0 and r["return_tokens_as_token_ids"] is True
                        and r["logprobs"] == len(r["allowed_token_ids"]) for r in reqs)
    # level by level: the first requests carry the prompts alone, later ones the prompt + the prefix's item tokens
    assert reqs[0]["prompt"] == base_ids  # level 0: both prompts share the allowed tokens: one request
    assert any(len(p) == len(base_ids[0]) + 2 for r in reqs for p in r["prompt"])  # level 2: prompt + 2 item tokens
