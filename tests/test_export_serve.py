"""Export and serving: merged and GGUF exports reload and generate; the OpenAI-compatible server
prompts with the training template, stops at the training EOS, batches, and rejects bad input;
the chat app builds, answers and opens.

The runs here hold a real PEFT adapter saved the way training saves it (adapter + tokenizer in
adapter/), with its LoRA B weights set to seeded noise so the adapter visibly changes the model;
training itself is covered by tests/test_train*.py and would add a minute per model.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import shutil
import weakref

import httpx
import pytest
import torch
from adapter_runs import PARAGRAPH, assert_portable, easy_prompt, free_port, last_logits

from polo_lib import atomic, cli, inference, model, params, paths, prompts, runs
from polo_lib.deploy import export, serve
from polo_lib.errors import ModelError, PoloError, RunError
from polo_lib.inference import loading

pytestmark = pytest.mark.slow

















# ---------------------------------------------------------------- export

# Token agreement of the merged export (weights rounded to bf16 on disk, reloaded in fp32) with the
# fp32 adapter it came from, 3 prompts x 24 greedy tokens on the tiny test model: measured 1.0
# (3 of 3 answers identical). The floor lets rounding move the tail of one answer.
MERGED_BF16_AGREEMENT = 0.9




@pytest.mark.parametrize("a,b,expected", [
    ([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 5]],
     {"identical": 2, "token_agreement": 1.0, "first_difference": [None, None]}),
    ([[1, 2, 3, 4]], [[1, 2, 9, 9]], {"identical": 0, "token_agreement": 0.5, "first_difference": [2]}),
    ([[1, 2]], [[1, 2, 3, 4]], {"identical": 0, "token_agreement": 0.5, "first_difference": [2]}),  # one stopped early
    ([[7], [1, 2]], [[8], [1, 2]], {"identical": 1, "token_agreement": 0.6667, "first_difference": [0, None]}),
])
def test_parity_counts_identical_answers_and_the_tokens_that_agree(a, b, expected):
    got = export.compare_answers(a, b)
    assert {k: got[k] for k in expected} == expected and got["of"] == len(a)




def test_adapter_and_merged_exports_reload_and_keep_the_adapter(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from polo_lib import data

    cfg = tiny_run.params()  # the processed data parity takes its prompts from
    data.save(data.prepare(cfg.data, model.load_tokenizer(cfg.model), cfg.model.max_seq_length), cfg.data)
    adapter = export.export(tiny_run, "adapter")
    merged = export.export(tiny_run, "merged")
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= set(adapter.files)
    assert {"model.safetensors", "config.json", "tokenizer_config.json", "README.md"} <= set(merged.files)
    card = (merged.path / "README.md").read_text(encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(str(tiny_run.adapter))
    assert tiny_run.id in card and "tiny-llama" in card and tok.chat_template in card
    assert f"`{tok.eos_token}` (id {tok.eos_token_id})" in card and prompts.SYSTEM_PROMPT in card
    assert merged.check["generated_tokens"] > 0 and adapter.check["generated_tokens"] > 0
    assert merged.check["dtype_on_disk"] == "bfloat16"  # 16-bit merge, even from float32 CPU training
    assert merged.check["reloaded"] == "AutoModelForCausalLM (float32 on cpu)"  # 16-bit on cuda on a GPU
    assert tiny_run.manifest()["exports"]["merged"]["files"] == merged.files
    assert_portable(adapter.path, tiny_run)
    assert_portable(merged.path, tiny_run)
    # parity: the test split's first paragraphs, greedy, through the run's adapter and each export
    adapter_parity = json.loads((adapter.path / "parity.json").read_text(encoding="utf-8"))
    merged_parity = json.loads((merged.path / "parity.json").read_text(encoding="utf-8"))
    (same,), (rounded,) = adapter_parity["pairs"], merged_parity["pairs"]
    assert adapter_parity["prompts"] == 3 and adapter_parity["source"] == "the first 3 paragraphs of the test split"
    assert same["expected"] == "identical" and same["identical"] == same["of"] == 3  # the same arithmetic
    assert rounded["expected"] == "tolerance" and "bfloat16" in rounded["why"]  # fp32 adapter vs bf16 weights
    assert rounded["token_agreement"] >= MERGED_BF16_AGREEMENT, rounded
    assert "## Parity" in card and f"| {rounded['identical']} of 3 |" in card
    for folder in (adapter.path, merged.path):  # readable by others as the umask says (0644 under 022)
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in folder.iterdir()} == \
               {p.name: oct(0o666 & ~atomic.umask()) for p in folder.iterdir()}

    # the merged weights are base + adapter: closer to the tuned model than to the base
    cfg = tiny_run.params()
    text = easy_prompt(tok)
    merged_model = AutoModelForCausalLM.from_pretrained(str(merged.path), dtype=torch.float32)
    tuned = inference.load_tuned(cfg, tiny_run)
    base = inference.load_base(cfg)
    m, t, b = (last_logits(x, tok, text) for x in (merged_model, tuned.model, base.model))
    assert (m - t).abs().max() < 0.25 * (t - b).abs().max(), ((m - t).abs().max(), (t - b).abs().max())

    # `polo serve --merged` serves that export, prompted by the run's own tokenizer
    backend = serve.load_backend(tiny_run, merged=True)
    try:
        assert backend.render(prompts.build_messages(PARAGRAPH)) == text
        assert inference.generate(backend.lm, [prompts.build_messages(PARAGRAPH)], max_new_tokens=4)[0].new_tokens > 0
    finally:
        backend.close()


def test_merged_export_frees_the_tuned_model_before_reloading_the_merge(tiny_run, monkeypatch):
    """On a T4 the 4-bit tuned model and the fp16 merged reload of a 3B model must not share the
    GPU: when the check reloads the merged folder, the tuned model is gone (real loaders)."""
    from transformers import AutoModelForCausalLM

    load_tuned, reload = inference.load_tuned, AutoModelForCausalLM.from_pretrained.__func__
    tuned_models, tuned_alive_at_reload = [], []

    def watched_tuned(cfg, run):
        loaded = load_tuned(cfg, run)
        tuned_models.append(weakref.ref(loaded.model))
        return loaded

    def watched_reload(cls, *args, **kwargs):
        if tuned_models:
            tuned_alive_at_reload.append(tuned_models[-1]() is not None)
        return reload(cls, *args, **kwargs)

    monkeypatch.setattr(inference, "load_tuned", watched_tuned)  # export's parity answers
    monkeypatch.setattr(loading, "load_tuned", watched_tuned)  # merge_to_16bit's own load
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(watched_reload))
    merged = export.export(tiny_run, "merged", overwrite=True)
    assert merged.check["generated_tokens"] > 0
    # two reloads: the tuned model again for the merge (after the one that answered parity's prompts), then
    # the merged folder; at each, the tuned model loaded before it is gone
    assert tuned_alive_at_reload == [False, False], "a tuned model was still in memory when the next one loaded"


def test_export_refusals_leave_nothing_half_written(tiny_run):
    first = export.export(tiny_run, "adapter", overwrite=True)
    stamp = (first.path / "README.md").stat().st_mtime_ns
    with pytest.raises(RunError, match="already exists: pass --force to replace it"):
        export.export(tiny_run, "adapter")
    assert (first.path / "README.md").stat().st_mtime_ns == stamp
    with pytest.raises(PoloError, match="--format 'onnx'"):
        export.export(tiny_run, "onnx")
    with pytest.raises(PoloError, match=r"GGUF type\(s\) \['q4_k_m'\]"):
        export.export(tiny_run, "gguf", gguf_types=["q4_k_m"])
    # the tiny model's home-made tokenizer is unknown to llama.cpp: a clear error, no gguf/ folder
    with pytest.raises(ModelError, match="pre-tokenizer"):
        export.export(tiny_run, "gguf", gguf_types=["f16"])
    assert not export.export_dir(tiny_run, "gguf").exists()
    assert not [p for p in (tiny_run.path / "export").iterdir() if p.name.startswith(".")]
    adapter_only = runs.open_run(tiny_run.params())
    shutil.copytree(tiny_run.adapter, adapter_only.adapter, dirs_exist_ok=True)
    with pytest.raises(ModelError, match="no merged export"):
        serve.load_backend(adapter_only, merged=True)
    untrained = runs.open_run(tiny_run.params())
    with pytest.raises(RunError, match="has no adapter"):
        export.export(untrained, "merged")




# ---------------------------------------------------------------- server

def test_server_answers_the_openai_client_with_the_training_template(tiny_server, tiny_run):
    from openai import OpenAI
    from transformers import AutoTokenizer

    backend, url = tiny_server
    client = OpenAI(base_url=f"{url}/v1", api_key="not-needed")
    assert [m.id for m in client.models.list().data] == [backend.model_id]
    messages = prompts.build_messages(PARAGRAPH)
    reply = client.chat.completions.create(model=backend.model_id, messages=messages, max_tokens=12)
    assert isinstance(reply.choices[0].message.content, str) and reply.choices[0].finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 12

    # the prompt string is the training tokenizer's rendering, and the one generation counted
    training_tok = AutoTokenizer.from_pretrained(str(tiny_run.adapter))
    expected = training_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rendered = httpx.post(f"{url}/apply-template", json={"messages": messages}).json()
    assert rendered["prompt"] == expected
    assert reply.usage.prompt_tokens == len(training_tok(expected, add_special_tokens=False)["input_ids"])
    assert backend.lm.tokenizer.eos_token_id == training_tok.eos_token_id
    # and the answer is what evaluation's generate gives for the same chat, token for token
    alone = inference.generate(backend.lm, [messages], max_new_tokens=12)[0]
    assert (reply.choices[0].message.content, reply.usage.completion_tokens) == (alone.text, alone.new_tokens)
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_twenty_concurrent_requests_are_batched_and_all_answered(tiny_server):
    backend, url = tiny_server
    before = dict(vars(backend.stats))

    def ask(i: int):
        body = {"messages": [{"role": "user", "content": f"Explain grid cell {i} of YOLO."}], "max_tokens": 8}
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)

    with cf.ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(ask, range(20)))
    assert [r.status_code for r in replies] == [200] * 20
    answers = [r.json()["choices"][0]["message"]["content"] for r in replies]
    stats = backend.stats
    assert stats.requests - before["requests"] == 20
    assert stats.batches - before["batches"] < 20 and max(stats.batch_sizes[before["batches"]:]) > 1
    # batching (left padding, greedy) gives each request the answer it gets alone
    assert ask(7).json()["choices"][0]["message"]["content"] == answers[7]


def test_bad_requests_get_a_clear_400_and_the_server_keeps_serving(tiny_server):
    backend, url = tiny_server
    user = {"role": "user", "content": "hello"}
    cases = [
        ({"model": backend.model_id}, 400, "messages: Field required"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
        ({"messages": [user, {"role": "assistant", "content": "x"}]}, 400, "must be 'user'"),
        ({"messages": [user, {"role": "system", "content": "x"}, user]}, 400, "only come first"),
        ({"messages": [user], "max_tokens": 100_000}, 400, "over this server's limit"),
        ({"messages": [user], "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": [{"role": "user", "content": "grid " * 3000}]}, 400, "max_seq_length"),
        ({"messages": [user], "stream_options": {"include_usage": True}}, 400, "only allowed with stream=true"),
        ({"messages": [user], "n": 2}, 400, "n=2 with greedy decoding"),
        ({"messages": [user], "logprobs": True}, 400, "does not support logprobs"),
        ({"messages": [user], "model": "gpt-4o"}, 404, "not served here"),
    ]
    for body, status, message in cases:
        r = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert r.status_code == status, (body, r.text)
        error = r.json()["error"]
        assert message in error["message"] and error["type"] == "invalid_request_error", (body, error)
    assert httpx.post(f"{url}/v1/chat/completions", content=b"{not json",
                      headers={"content-type": "application/json"}).status_code == 400
    ok = httpx.post(f"{url}/v1/chat/completions", json={"messages": [user], "max_tokens": 4}, timeout=60)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 4


def test_a_server_with_an_api_key_answers_only_who_sends_it_and_health_to_anyone(tiny_server):
    from openai import AuthenticationError, OpenAI

    backend, _ = tiny_server
    key = "polo-test-key-7f3a"
    with pytest.raises(PoloError, match="API key is empty"):
        serve.create_app(backend, api_key="  ")
    port = free_port()
    server = serve.start_in_thread(serve.create_app(backend, api_key=key), port=port)
    url = f"http://127.0.0.1:{port}"
    try:
        right = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        reply = right.chat.completions.create(model=backend.model_id, max_tokens=4,
                                              messages=[{"role": "user", "content": "hello"}])
        assert 0 < reply.usage.completion_tokens <= 4
        for wrong in ("wrong", key[:-1], key + "x", key.upper()):  # shorter, longer, other case
            with pytest.raises(AuthenticationError) as raised:
                OpenAI(base_url=f"{url}/v1", api_key=wrong, max_retries=0).models.list()
            assert raised.value.status_code == 401 and raised.value.code == "invalid_api_key"
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/apply-template"),
                             ("GET", "/docs"), ("GET", "/openapi.json")):
            for headers in ({}, {"Authorization": f"Basic {key}"}, {"Authorization": key}):
                r = httpx.request(method, url + path, headers=headers, json={"messages": [{"role": "user",
                                                                                          "content": "hi"}]})
                assert r.status_code == 401, (path, headers, r.text)
                assert r.json()["error"]["type"] == "invalid_request_error" and "Bearer" in r.json()["error"]["message"]
        health = httpx.get(f"{url}/health")
        assert health.status_code == 200 and health.json()["api_key_required"] is True
        # `polo chat --server URL` sends the same key and gets the server's answers
        from polo_lib.deploy import chat_app

        remote = chat_app.connect(url, key)
        assert remote.run_id == backend.model_id and remote.base is None
        assert chat_app.explain(remote, PARAGRAPH, 8) == inference.shown_text(inference.generate(
            backend.lm, [prompts.build_messages(PARAGRAPH)], max_new_tokens=8)[0])
        assert "not loaded" in chat_app.compare(remote, PARAGRAPH, True, 8)[0]
        with pytest.raises(PoloError, match="refused the API key"):
            chat_app.connect(url, "wrong")
        with pytest.raises(PoloError, match="no server answers"):
            chat_app.connect(f"http://127.0.0.1:{free_port()}", key)
    finally:
        server.should_exit = True
        server.thread.join(timeout=10)


def test_a_full_queue_answers_503_with_retry_after_and_a_slow_request_504(tiny_server):
    backend, url = tiny_server
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
    before = dict(vars(backend.stats))
    try:
        backend.max_queue = 0
        r = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "overloaded" and "busy" in r.json()["error"]["message"]
        backend.max_queue, backend.request_timeout_s = serve.MAX_QUEUE, 0.01  # shorter than a batch's wait
        r = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    finally:
        backend.max_queue, backend.request_timeout_s = serve.MAX_QUEUE, serve.REQUEST_TIMEOUT_S
    assert backend.stats.rejected_busy == before["rejected_busy"] + 1
    assert backend.stats.timed_out == before["timed_out"] + 1
    assert backend.stats.requests == before["requests"]  # the timed-out request was never generated
    assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code == 200
    assert backend.waiting == 0


def test_the_load_test_measures_a_running_server(tiny_server, capsys):
    """`python -m benchmarks.serve_load URL CONCURRENCY REQUESTS`: one warm-up request, then the
    requests in waves of CONCURRENCY; one JSON line. polo_lib.deploy keeps no entry point of its own."""
    from benchmarks import serve_load

    backend, url = tiny_server
    before = backend.stats.requests
    assert serve_load.main([url, "2", "3", "--max-tokens", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["concurrency"] == 2 and result["requests"] == 3 and result["max_tokens"] == 4
    assert 0 < result["completion_tokens"] <= 3 * 4 and result["tokens_per_s"] > 0
    assert result["prompt_tokens_mean"] > 100  # the Easy prompt around a YOLO paragraph
    assert backend.stats.requests - before == 1 + 3  # the warm-up is sent but not counted
    with pytest.raises(SystemExit):
        serve_load.main([url, "0"])
    deploy = sorted((paths.PROJ_ROOT / "polo_lib" / "deploy").glob("*.py"))
    mains = [p.name for p in deploy if '__name__ == "__main__"' in p.read_text(encoding="utf-8")]
    assert deploy and not mains, mains  # every deploy module is run through polo_lib.cli, none as a script


def test_smollm2_server_stops_at_the_training_eos(smollm2_run):
    """SmolLM2's training EOS is <|im_end|> (not the GGUF's <|im_start|>): the server ends there."""
    from openai import OpenAI

    backend = serve.load_backend(smollm2_run)
    port = free_port()
    server = serve.start_in_thread(serve.create_app(backend), port=port)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
        reply = client.chat.completions.create(model=backend.model_id, max_tokens=96, messages=[
            {"role": "user", "content": "Reply with one word: what is the capital of France?"}])
        assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens < 96
        assert "Paris" in reply.choices[0].message.content
        assert backend.lm.tokenizer.eos_token == "<|im_end|>"
    finally:
        server.should_exit = True
        server.thread.join(timeout=10)
        backend.close()


# ---------------------------------------------------------------- explain a paper

def test_polo_explain_writes_the_paper_side_by_side_with_the_runs_model_and_the_server_agrees(
        tiny_run, tiny_server, monkeypatch, capsys, tmp_path, text_pdf):
    """The project's test paper (31 paragraphs, not training data) through the tiny run's adapter:
    every paragraph explained with the Easy prompt exactly as evaluation generates, the rest kept;
    the same paper through `polo serve` gives the same answers; a small text PDF works the same."""
    from polo_lib.deploy import explain

    paper = explain.resolve_paper(None)
    monkeypatch.setenv("POLO_OUTPUTS", str(tiny_run.path.parents[1]))
    assert cli.main(["explain", tiny_run.id, str(paper), "--max-new-tokens", "6", "--batch-size", "8", "--force"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "31 paragraph(s)" in printed and "13 heading(s)" in printed and "tokens/s" in printed
    loading = captured.err.replace("\n", "\r").split("\r")  # the model loads under a bar
    assert any(f"loading run {tiny_run.id}: adapter: 100%" in d and " 1/1 [" in d for d in loading), loading
    written = explain.output_paths(tiny_run, paper)
    body = json.loads(written["json"].read_text(encoding="utf-8"))
    assert body["counts"] == {"heading": 13, "paragraph": 31, "caption": 1, "equation": 1, "reference": 4}
    paragraphs = [b for b in body["blocks"] if b["kind"] == "paragraph"]
    assert all(b["korean"] is not None for b in paragraphs)
    assert all(b["korean"] is None for b in body["blocks"] if b["kind"] != "paragraph")  # never sent
    lm = inference.with_tokenizer(inference.load_tuned(tiny_run.params(), tiny_run), inference.run_tokenizer(tiny_run))
    alone = inference.generate(lm, [prompts.build_messages(paragraphs[3]["text"])], max_new_tokens=6)[0]
    assert (paragraphs[3]["korean"], paragraphs[3]["cut"]) == (alone.text, alone.cut)  # as evaluation generates
    md = written["md"].read_text(encoding="utf-8")
    page = written["html"].read_text(encoding="utf-8")
    assert "## 6. A Loss for Imbalanced Data" in md and "> [3] A focal loss for dense detection" in md
    assert md.count("**쉬운 설명**") == 31 and page.count("<div class='pair'>") == 31
    assert '<mark title="겹치는 정도 (IoU)">intersection over union</mark>' in page  # glossary terms marked
    # explanations that ran to the 6 tokens say so, in the facts and under each
    cut = sum(b["cut"] for b in paragraphs)
    assert cut > 0 and body["cut"] == cut and body["max_new_tokens"] == 6
    assert md.count("*[cut off at the limit of 6 new tokens]*") == page.count("<span class='cut'>") == cut
    assert f"{cut} of them reached the limit of 6 new tokens" in md
    with pytest.raises(RunError, match="already exists: pass --force"):
        explain.check_outputs(tiny_run, paper, overwrite=False)

    # the same paper through a running server: the same answers
    _, url = tiny_server
    served, _ = explain.explain_paper(tiny_run, paper, server=url, max_new_tokens=6, batch_size=4, overwrite=True)
    assert served.model.startswith("polo-easy-")
    assert [(b.korean, b.cut) for b in served.blocks if b.kind == "paragraph"] == \
        [(b["korean"], b["cut"]) for b in paragraphs]  # finish_reason "length" where it was cut

    # a text PDF made here
    pdf = tmp_path / "two_pages.pdf"
    pdf.write_bytes(text_pdf([["1 Introduction", "", "YOLO looks at the whole image once.", "",
                               "Table 1: Speed."], ["Anchor boxes bring shapes that must match the data."]]))
    result, _ = explain.explain_paper(tiny_run, pdf, max_new_tokens=4)
    assert result.counts == {"heading": 1, "paragraph": 2, "caption": 1} and result.new_tokens > 0
    # bad input through the command line: a message and exit 2, nothing written
    scanned = tmp_path / "scanned.pdf"
    scanned.write_bytes(text_pdf([[]]))
    assert cli.main(["explain", tiny_run.id, str(scanned)]) == 2
    assert "no text layer" in capsys.readouterr().err
    assert not explain.output_paths(tiny_run, scanned)["md"].exists()


# ---------------------------------------------------------------- chat app and CLI

def test_polo_serve_of_a_run_drafts_a_markdown_paper_and_a_text_pdf_as_a_teacher(tiny_server, tmp_path, text_pdf):
    """polo draft against a real `polo serve` of the tiny run (junk Korean, real mechanics): a Markdown paper
    and a two-page text PDF made here, every paragraph drafted through the OpenAI API, numbered by its
    section, marked draft with the served model's name and the tokens the server counted."""
    from polo_lib import judge
    from polo_lib.deploy import draft

    backend, url = tiny_server
    md = tmp_path / "notes.md"
    md.write_text("# Notes\n\n## 1. Boxes\n\nA detector predicts boxes and scores at every cell of a grid.\n\n"
                  "Each box has a confidence that it holds an object.\n\n## 2. Loss\n\nThe loss adds the box "
                  "error and the class error over every cell of the grid.\n", encoding="utf-8")
    pdf = tmp_path / "short.pdf"
    pdf.write_bytes(text_pdf([["1. Introduction", "", "YOLO looks at the whole image once."],
                              ["2. Method", "", "Each grid cell predicts boxes and their confidence scores."]]))
    asker = judge.Asker(f"{url}/v1", backend.model_id, max_tokens=8, role="teacher")
    try:
        for paper, ids in ((md, ["1.1.1", "1.2.1", "2.1.1"]), (pdf, ["1.1.1", "2.1.1"])):
            out = tmp_path / f"{paper.stem}.jsonl"
            result = draft.draft_paper(paper, asker, out, concurrency=2, show_progress=False)
            assert result.complete and result.drafted == len(ids), result
            records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
            assert [r["id"] for r in records] == ids
            assert all(r["status"] == "draft" and r["source"] == f"teacher:{backend.model_id}" for r in records)
            assert all(r["simplified"] and r["tokens"] > 0 for r in records)
            assert result.tokens == sum(r["tokens"] for r in records)
    finally:
        asker.close()


def test_chat_app_handlers_answer_and_the_app_opens(tiny_run, capsys):
    """The models load under a bar (tuned, then base); the handlers answer as inference does; the app
    opens saying where in one line of ours, without Gradio's hint at a share option `polo chat` does
    not have."""
    from polo_lib.deploy import chat_app

    models = chat_app.load_models(tiny_run)
    loading = capsys.readouterr().err.replace("\n", "\r").split("\r")
    assert any(f"loading run {tiny_run.id}: base: 100%" in d and " 2/2 [" in d for d in loading), loading
    reply = chat_app.chat_reply(models, "What is a grid cell?", [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}],
        max_new_tokens=8)
    base, tuned = chat_app.compare(models, PARAGRAPH, easy_prompt=True, max_new_tokens=8)
    explained = chat_app.explain(models, PARAGRAPH, max_new_tokens=8)
    assert reply and base and tuned and base != tuned
    # "explain" is the Easy prompt, exactly as training built it
    assert explained == tuned == inference.shown_text(inference.generate(
        models.tuned, [prompts.build_messages(PARAGRAPH)], max_new_tokens=8)[0])
    port = free_port()
    capsys.readouterr()
    app = chat_app.open_app(chat_app.build_app(models), port=port, block=False)  # what `polo chat` runs
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert r.status_code == 200 and "POLO Easy" in r.text
        assert capsys.readouterr().out == f"polo chat: open http://127.0.0.1:{port}/ in a browser (Ctrl+C stops it)\n"
    finally:
        app.close()


def test_polo_export_cli_resolves_latest_and_reports_problems(tiny_run, monkeypatch, capsys):
    monkeypatch.setenv("POLO_OUTPUTS", str(tiny_run.path.parent.parent))
    assert cli.main(["export", "latest", "--format", "adapter", "--force"]) == 0
    assert tiny_run.id in capsys.readouterr().out
    assert cli.main(["export", "no-such-run", "--format", "merged"]) == 2
    assert "run 'no-such-run' not found" in capsys.readouterr().err
    assert cli.main(["serve", "latest", "--max-batch-size", "0"]) == 2
    assert "--max-batch-size must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["export", "latest", "--format", "onnx"])
    assert json.loads((tiny_run.path / "manifest.json").read_text(encoding="utf-8"))["exports"]["adapter"]




# The Docker files are read here, not built or run (no Docker, no GPU in the tests): what they
# ask for is checked against the code that would receive it, the cli parser and device.decide.

def _compose():
    import yaml

    from polo_lib import paths

    return yaml.safe_load((paths.PROJ_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))["services"]


def _as_run(command: list[str]) -> list[str]:
    """A compose command as it runs with no variables set: ${VAR:-default} becomes default."""
    import re

    return [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", part) for part in command]


def test_compose_train_reserves_a_gpu_and_runs_the_gpu_recipe_that_decides_the_gpu_path_on_a_t4():
    from polo_lib import device

    train = _compose()["train"]
    assert train["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    argv = _as_run(train["command"])
    assert argv[0] == "polo"
    args = cli.build_parser().parse_args(argv[1:])
    assert args.handler is cli.cmd_run and args.params == "default"
    assert args.sets == [] and args.stages is None and args.run_id is None  # the whole pipeline, a new run
    cfg = params.load(args.params)
    assert cfg.model.require_gpu and cfg.model.load_in_4bit
    t4 = device.decide_for(cfg, device.profile("t4"))
    assert (t4.use_cpu, t4.dtype, t4.fp16, t4.bf16) == (False, "float16", True, False)
    assert (t4.load_in_4bit, t4.optim, t4.gradient_checkpointing, t4.notes) == (True, "adamw_8bit", "unsloth", ())
    # without the GPU reservation the container has no CUDA, and this recipe is refused, not run on the CPU
    with pytest.raises(ModelError, match="this is a GPU recipe"):
        device.decide_for(cfg, device.profile("cpu"))


def test_compose_serve_and_chat_listen_on_every_interface_at_the_published_port_for_the_latest_run():
    services = _compose()
    for name, handler in (("serve", cli.cmd_serve), ("chat", cli.cmd_chat)):
        argv = _as_run(services[name]["command"])
        assert argv[0] == "polo", name
        args = cli.build_parser().parse_args(argv[1:])
        assert args.handler is handler and args.run_id == "latest" and args.host == "0.0.0.0", name
        # published on the host's loopback only, to the port the command listens on
        assert services[name]["ports"] == [f"127.0.0.1:{args.port}:{args.port}"], name
    # the API key comes from the host's environment, never from the command line (visible in ps)
    assert "POLO_API_KEY" in services["serve"]["environment"] and "--api-key" not in services["serve"]["command"]
    serve_port = cli.build_parser().parse_args(_as_run(services["serve"]["command"])[1:]).port
    assert f"http://127.0.0.1:{serve_port}/health" in " ".join(services["serve"]["healthcheck"]["test"])
    assert all("./outputs:/app/outputs" in s["volumes"] for s in services.values())


def test_dockerfile_installs_the_pinned_gpu_stack_and_runs_only_commands_that_exist():
    import re
    import shlex

    from polo_lib import paths

    text = (paths.PROJ_ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    instructions = re.findall(r"^([A-Z]+) (.*)$", re.sub(r"\\\n", " ", "\n".join(lines)), re.M)
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("nvidia/cuda:")
    shell = [c.strip() for kind, body in instructions if kind == "RUN" for c in body.split("&&")]
    assert any(c.startswith("pip install -r requirements/gpu.txt") for c in shell)
    gpu = (paths.PROJ_ROOT / "requirements" / "gpu.txt").read_text(encoding="utf-8")
    assert re.search(r"^unsloth==", gpu, re.M) and re.search(r"^bitsandbytes==", gpu, re.M)  # 4-bit, adamw_8bit
    # every `polo ...` it runs parses, and every `python -m polo_lib.X` has a __main__ to run
    polo = [shlex.split(c)[1:] for c in shell if c.startswith("polo ")]
    assert ["install-converter"] in polo  # the GGUF converter is in the image
    for argv in polo:
        cli.build_parser().parse_args(argv)
    for module in re.findall(r"^python3? -m (polo_lib\.\w+)", "\n".join(shell), re.M):
        source = (paths.PROJ_ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        assert 'if __name__ == "__main__"' in source, f"`python -m {module}` in the Dockerfile does nothing"
    cmd = [json.loads(body) for kind, body in instructions if kind == "CMD"]
    assert cmd == [_as_run(_compose()["serve"]["command"])]  # `docker run` alone serves like compose
