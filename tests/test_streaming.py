"""Answers that stream, through real clients: the `openai` package and raw HTTP against `polo serve`
of a run with a real adapter (streams and plain requests in one batcher, a client that leaves,
a full queue, time limits, n / stop / seed, /v1/completions, unsupported fields), the chat app's
handlers, and `polo explain`'s live line. The browser side is in tests/test_browser.py.
"""
from __future__ import annotations

import concurrent.futures as cf
import io
import json
import time

import httpx
import pytest
import torch
from adapter_runs import PARAGRAPH, free_port

from polo_lib import inference, local_models, prompts
from polo_lib.deploy import serve
from polo_lib.inference import decoding

pytestmark = pytest.mark.slow

EASY = prompts.build_messages(PARAGRAPH)
# On the tiny test run this chat runs on without EOS for hundreds of tokens (greedy): a stream
# of it is still generating when a test leaves, fills the queue or passes a time limit.
LONG = [{"role": "user", "content": "grid grid grid grid"}]


@pytest.fixture(scope="module")
def server(tiny_server):
    """`polo serve` of the module's tiny run in a thread (adapter_runs.tiny_server)."""
    return tiny_server


def client(url: str, key: str = "not-needed"):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def streamed_text(stream) -> tuple[str, list[str], object]:
    """(the content deltas joined, the finish reasons seen, the usage chunk's usage or None)."""
    pieces, finishes, usage = [], [], None
    for chunk in stream:
        for choice in chunk.choices:
            if getattr(choice, "delta", None) is not None and choice.delta.content:
                pieces.append(choice.delta.content)
            if getattr(choice, "text", None):
                pieces.append(choice.text)
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
        usage = chunk.usage or usage
    return "".join(pieces), finishes, usage


def wait_until_idle(url: str, seconds: float = 15.0) -> dict:
    """/health once no row generates and no request waits; fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        health = httpx.get(f"{url}/health", timeout=5).json()
        if health["generating"] == 0 and health["waiting"] == 0:
            return health
        assert time.monotonic() < deadline, f"still busy after {seconds} s: {health}"
        time.sleep(0.05)


# ---------------------------------------------------------------- text as it comes (pure)

@pytest.mark.parametrize("text,stop,shown", [
    (" Hello world ", (), "Hello world"),              # the whitespace the finished answer strips waits
    ("사과\ufffd", (), "사과"),                           # a syllable's first bytes wait for the rest
    ("사과\ufffd\ufffd", (), "사과"),
    ("Hello wor", ("world",), "Hello"),                 # "wor" may become the stop string: held
    ("Hello wo", ("world", "END"), "Hello"),
    ("Hello E", ("world", "END"), "Hello"),
    ("Hello x", ("world",), "Hello x"),                 # cannot become one: shown
    ("Hello", ("\n\n",), "Hello"),
    ("", ("x",), ""),
])
def test_only_text_no_later_token_can_change_is_shown(text, stop, shown):
    assert inference.showable(text, stop) == shown


def test_a_plain_prompts_continuation_keeps_its_whitespace():
    assert inference.showable(" Paris is\ufffd", ("x",), strip=False) == " Paris is"
    assert inference.showable(" Paris ", ("Paris  ",), strip=False) == " "  # "Paris " may grow into the stop


@pytest.mark.parametrize("text,stop,expected", [
    ("a b\n\nc", ("\n\n",), ("a b", True)),
    ("one END two STOP", ("STOP", "END"), ("one ", True)),  # the earliest stop string wins
    ("no stop here", ("STOP",), ("no stop here", False)),
    ("x", ("",), ("x", False)),                              # an empty stop string stops nothing
])
def test_an_answer_is_cut_before_its_first_stop_string(text, stop, expected):
    assert inference.cut_at_stop(text, stop) == expected


def test_a_streamed_korean_answer_never_shows_half_a_character():
    """SmolLM2's byte-level BPE splits Hangul syllables over tokens. Fed token by token through the
    streamer generate uses, the pieces never hold U+FFFD, some tokens show nothing (a syllable
    waits for its last byte), and the pieces add up to the answer's final text."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(local_models.resolve("smollm2-135m-instruct"))
    answer = "YOLO는 사진을 7x7 격자로 나누고, 칸마다 물체의 상자와 확률을 한 번에 예측해요."
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    answers, pieces, per_token = [decoding._Answer()], [], []
    writer = decoding._Writer(tok, answers, [0], (), lambda i, piece: pieces.append(piece), None, None, 1)
    writer.put(torch.tensor([[1, 2, 3]]))  # the prompt comes first and shows nothing
    for token in ids:
        before = len(pieces)
        writer.put(torch.tensor([token]))
        per_token.append(len(pieces) - before)
    writer.finish_rest(1.0)
    assert not any(inference.BROKEN in p for p in pieces), pieces
    assert per_token.count(0) > 5, "no token fell inside a syllable: this answer tests nothing"
    assert "".join(pieces) == answers[0].result.text == answer
    assert answers[0].result.new_tokens == len(ids) and not answers[0].result.stopped


# ---------------------------------------------------------------- the OpenAI API, streamed

def test_a_stream_is_the_non_streamed_greedy_answer_token_for_token(server):
    """The openai client's stream=True: role first, the deltas add up to the non-streamed answer,
    one finish_reason, and the usage chunk counts the same tokens."""
    backend, url = server
    api = client(url)
    whole = api.chat.completions.create(model=backend.model_id, messages=EASY, max_tokens=40)
    chunks = list(api.chat.completions.create(model=backend.model_id, messages=EASY, max_tokens=40, stream=True,
                                              stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text, finishes, usage = streamed_text(chunks)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # it came in pieces
    assert text == whole.choices[0].message.content and text
    assert finishes == [whole.choices[0].finish_reason]
    assert (usage.prompt_tokens, usage.completion_tokens) == (whole.usage.prompt_tokens, whole.usage.completion_tokens)
    wait_until_idle(url)  # the server's thread is done with the model the test generates with next
    alone = inference.generate(backend.lm, [EASY], max_new_tokens=40)[0]  # what evaluation generates
    assert (text, usage.completion_tokens) == (alone.text, alone.new_tokens)


def test_raw_server_sent_events_follow_openais_chunk_schema(server):
    """The bytes a curl user sees: `data: <json>` lines and blank lines, each chunk valid against the
    openai package's own ChatCompletionChunk type, one id, one choice per chunk, usage null until
    the last chunk, then `data: [DONE]`. Two sampled choices stream with their indices."""
    from openai.types.chat import ChatCompletionChunk

    backend, url = server
    body = {"messages": EASY, "max_tokens": 12, "stream": True, "n": 2, "temperature": 1.0, "seed": 5,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        lines = list(r.iter_lines())
    assert all(line == "" or line.startswith("data: ") for line in lines), lines
    events = [line.removeprefix("data: ") for line in lines if line]
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = [json.loads(e) for e in events[:-1]]
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
        assert c["object"] == "chat.completion.chunk" and c["model"] == backend.model_id
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    *content, last = chunks
    assert all(len(c["choices"]) == 1 and c["usage"] is None for c in content)
    assert last["choices"] == [] and last["usage"]["completion_tokens"] > 0
    for index in (0, 1):
        mine = [c["choices"][0] for c in content if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}  # the role first
        assert [m["finish_reason"] for m in mine][-1] in ("stop", "length")  # a finish reason last
        assert all(m["finish_reason"] is None for m in mine[:-1]) and mine[-1]["delta"] == {}
    texts = ["".join(c["choices"][0]["delta"].get("content", "") for c in content if c["choices"][0]["index"] == i)
             for i in (0, 1)]
    plain = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={k: v for k, v in body.items()
                                                                      if k not in ("stream", "stream_options")})
    assert texts == [c["message"]["content"] for c in plain.json()["choices"]]  # same seed, same batch: same samples


def test_streams_and_plain_requests_share_one_batch_and_each_gets_its_own_answer(server):
    backend, url = server
    before = len(backend.stats.batch_sizes)
    chats = [[{"role": "user", "content": f"Explain grid cell {i} of YOLO."}] for i in range(4)]

    def ask(i: int) -> str:
        if i % 2:
            return streamed_text(client(url).chat.completions.create(model=backend.model_id, messages=chats[i],
                                                                     max_tokens=10, stream=True))[0]
        return client(url).chat.completions.create(model=backend.model_id, messages=chats[i],
                                                   max_tokens=10).choices[0].message.content

    try:
        backend.batch_wait = 1.0  # time for all four to arrive, even on a busy machine
        with cf.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, range(4)))
    finally:
        backend.batch_wait = serve.BATCH_WAIT_MS / 1000
    assert backend.stats.batch_sizes[before:] == [4]  # two streams and two plain requests, one batch
    wait_until_idle(url)
    assert answers == [g.text for g in inference.generate(backend.lm, chats, max_new_tokens=10, batch_size=1)]


def test_a_client_that_disconnects_mid_stream_frees_its_row(server):
    """Two streams share a batch; each client reads a few pieces, then one closes its connection:
    its row stops at the next token (it would run on for 900) while the other goes on, and /health
    shows one row generating, then none once the other leaves too."""
    import threading

    backend, url = server
    before, tokens = httpx.get(f"{url}/health").json(), backend.stats.generated_tokens
    reading, leave = threading.Barrier(3), [threading.Event(), threading.Event()]

    def client_reading(i: int) -> None:
        body = {"messages": LONG, "max_tokens": 900, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            content = 0
            while content < 3:
                line = next(lines)
                content += '"content": "' in line and '"role"' not in line
            reading.wait(timeout=30)
            leave[i].wait(timeout=30)
        # leaving the block closes the connection mid-stream

    with cf.ThreadPoolExecutor(2) as pool:
        try:
            backend.batch_wait = 1.0  # both in one batch, even on a busy machine
            clients = [pool.submit(client_reading, i) for i in (0, 1)]
            reading.wait(timeout=30)
        finally:
            backend.batch_wait = serve.BATCH_WAIT_MS / 1000
        both = httpx.get(f"{url}/health").json()
        leave[0].set()
        clients[0].result(timeout=30)
        deadline = time.monotonic() + 10
        while (one := httpx.get(f"{url}/health").json())["generating"] != 1:
            assert time.monotonic() < deadline, one
            time.sleep(0.02)
        leave[1].set()
        clients[1].result(timeout=30)
    assert (both["generating"], both["streams"]) == (2, 2), both
    assert one["streams"] == 1 and one["cancelled_rows"] == before["cancelled_rows"] + 1, one
    after = wait_until_idle(url, seconds=10)
    assert after["streams"] == 0 and after["cancelled_rows"] == before["cancelled_rows"] + 2, (before, after)
    assert backend.stats.batch_sizes[-1] == 2 and backend.stats.generated_tokens - tokens < 400


def test_a_client_that_leaves_while_its_stream_waits_in_the_queue_generates_next_to_nothing(server):
    """The client gives up before its batch starts (no byte sent yet): when the batch starts the
    response finds the connection closed and the row stops at its first tokens."""
    backend, url = server
    before, tokens = httpx.get(f"{url}/health").json(), backend.stats.generated_tokens
    try:
        backend.batch_wait = 1.0  # the request waits a second for company before its batch starts
        with pytest.raises(httpx.ReadTimeout):
            with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=0.3,
                              json={"messages": LONG, "max_tokens": 900, "stream": True}):
                pass
    finally:
        backend.batch_wait = serve.BATCH_WAIT_MS / 1000
    after = wait_until_idle(url, seconds=10)
    assert after["streams"] == 0 and after["cancelled_rows"] == before["cancelled_rows"] + 1, (before, after)
    assert backend.stats.generated_tokens - tokens < 100


def test_a_stream_in_a_full_queue_gets_503_before_its_first_byte_and_time_limits_apply(server):
    from openai import APIError, APIStatusError

    backend, url = server
    api = client(url)
    try:
        backend.max_queue = 1
        with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60,
                          json={"messages": LONG, "max_tokens": 900, "stream": True}) as first:
            lines = first.iter_lines()  # kept: a dropped iterator closes the connection (the client leaves)
            next(line for line in lines if '"content": "' in line and '"role"' not in line)
            assert httpx.get(f"{url}/health").json()["streams"] == 1  # generating, holding the queue
            busy = httpx.post(f"{url}/v1/chat/completions", json={"messages": EASY, "stream": True})
            assert busy.status_code == 503 and busy.headers["content-type"] == "application/json"
            assert int(busy.headers["retry-after"]) >= 1 and busy.json()["error"]["code"] == "overloaded"
            with pytest.raises(APIStatusError) as raised:
                api.chat.completions.create(model=backend.model_id, messages=EASY, stream=True)
            assert raised.value.status_code == 503
        backend.max_queue = serve.MAX_QUEUE
        wait_until_idle(url)

        backend.request_timeout_s = 0.01  # shorter than the batch's wait: timed out in the queue, a 504
        late = httpx.post(f"{url}/v1/chat/completions", json={"messages": EASY, "stream": True})
        assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
        backend.request_timeout_s = 1.0  # started, then over the limit: an error event ends the stream
        timed_out = backend.stats.timed_out
        with pytest.raises(APIError, match="no answer within the server's limit of 1 s"):
            streamed_text(api.chat.completions.create(model=backend.model_id, messages=LONG, max_tokens=900,
                                                      stream=True))
        assert backend.stats.timed_out == timed_out + 1
    finally:
        backend.max_queue, backend.request_timeout_s = serve.MAX_QUEUE, serve.REQUEST_TIMEOUT_S
    assert wait_until_idle(url)["streams"] == 0  # the timed-out stream's row stopped too

    # the API key applies to streams as to the rest
    port = free_port()
    keyed = serve.start_in_thread(serve.create_app(backend, api_key="k3y"), port=port)
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": EASY, "stream": True})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        text, _, _ = streamed_text(client(f"http://127.0.0.1:{port}", "k3y").chat.completions.create(
            model=backend.model_id, messages=EASY, max_tokens=4, stream=True))
        assert text
    finally:
        keyed.should_exit = True
        keyed.thread.join(timeout=10)


# ---------------------------------------------------------------- n, stop, seed, /v1/completions

def test_n_sampled_choices_a_seed_repeats_them_and_greedy_n_is_refused_with_the_reason(server):
    from openai import BadRequestError

    backend, url = server
    api = client(url)

    def sample(seed: int, **extra) -> list[str]:
        reply = api.chat.completions.create(model=backend.model_id, messages=EASY, max_tokens=16, n=2,
                                            temperature=1.0, seed=seed, **extra)
        assert [c.index for c in reply.choices] == [0, 1]
        return [c.message.content for c in reply.choices]

    first = sample(7)
    assert first[0] != first[1]  # two samples, not one answer twice
    assert sample(7) == first  # the same seed: the same answers
    assert sample(8) != first
    with pytest.raises(BadRequestError) as raised:
        api.chat.completions.create(model=backend.model_id, messages=EASY, n=2)
    assert raised.value.param == "n" and "identical choices" in raised.value.message and "temperature" in \
        raised.value.message
    with pytest.raises(BadRequestError, match="at most 8 together"):
        api.chat.completions.create(model=backend.model_id, messages=EASY, n=9, temperature=1.0)


def test_a_stop_string_cuts_the_answer_streamed_or_not(server):
    backend, url = server
    api = client(url)
    whole = api.chat.completions.create(model=backend.model_id, messages=EASY, max_tokens=40)
    full = whole.choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 3]
    expected = full[:full.find(stop)].rstrip()
    assert len(expected) > 3, full
    cut = api.chat.completions.create(model=backend.model_id, messages=EASY, max_tokens=40, stop=[stop, "never"])
    assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < whole.usage.completion_tokens  # generation stopped there
    text, finishes, _ = streamed_text(api.chat.completions.create(model=backend.model_id, messages=EASY,
                                                                  max_tokens=40, stop=stop, stream=True))
    assert (text, finishes) == (expected, ["stop"])


def test_an_answer_cut_at_max_tokens_finishes_with_length_streamed_or_not(server):
    """OpenAI's finish_reason: "length" when max_tokens cut the answer (LONG runs on without EOS),
    "stop" when it ended (a stop string here; EOS in test_export_serve), the same in a stream, on
    both endpoints."""
    backend, url = server
    api = client(url)
    cut = api.chat.completions.create(model=backend.model_id, messages=LONG, max_tokens=6)
    assert (cut.choices[0].finish_reason, cut.usage.completion_tokens) == ("length", 6)
    _, finishes, _ = streamed_text(api.chat.completions.create(model=backend.model_id, messages=LONG, max_tokens=6,
                                                               stream=True))
    assert finishes == ["length"]
    stop = cut.choices[0].message.content.split()[-1]  # met at the 6th token: it ended there, "stop"
    ended = api.chat.completions.create(model=backend.model_id, messages=LONG, max_tokens=6, stop=[stop])
    assert ended.choices[0].finish_reason == "stop"
    _, finishes, _ = streamed_text(api.chat.completions.create(model=backend.model_id, messages=LONG, max_tokens=6,
                                                               stop=[stop], stream=True))
    assert finishes == ["stop"]
    plain = api.completions.create(model=backend.model_id, prompt="grid grid grid", max_tokens=5)
    assert (plain.choices[0].finish_reason, plain.usage.completion_tokens) == ("length", 5)
    _, finishes, _ = streamed_text(api.completions.create(model=backend.model_id, prompt="grid grid grid",
                                                          max_tokens=5, stream=True))
    assert finishes == ["length"]


def test_completions_answers_a_plain_prompt_without_the_chat_template(server):
    from openai import BadRequestError

    backend, url = server
    api = client(url)
    prompt = "YOLO divides the input image into"
    reply = api.completions.create(model=backend.model_id, prompt=prompt, max_tokens=12)
    wait_until_idle(url)  # the server's thread is done with the model the test generates with next
    alone = inference.generate_prompts(backend.lm, [prompt], max_new_tokens=12, strip=False)[0]
    assert reply.object == "text_completion" and reply.choices[0].text == alone.text and alone.text.strip()
    assert alone.text != alone.text.strip(), "the continuation starts with a space on the tiny run: kept"
    assert reply.usage.prompt_tokens == backend.count_tokens(prompt)
    assert reply.usage.completion_tokens == alone.new_tokens
    text, finishes, _ = streamed_text(api.completions.create(model=backend.model_id, prompt=prompt, max_tokens=12,
                                                             stream=True))
    assert text == alone.text and len(finishes) == 1
    two = api.completions.create(model=backend.model_id, prompt=[prompt, "A grid cell"], max_tokens=4)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].text == reply.choices[0].text[:len(
        two.choices[0].text)]
    default = api.completions.create(model=backend.model_id, prompt=prompt)
    assert default.usage.completion_tokens <= serve.COMPLETIONS_MAX_TOKENS
    with pytest.raises(BadRequestError, match="prompt is empty"):
        api.completions.create(model=backend.model_id, prompt=" ")


@pytest.mark.parametrize("field,value", [
    ("logprobs", True), ("top_logprobs", 2), ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("response_format", {"type": "json_object"}), ("presence_penalty", 0.5), ("frequency_penalty", 1.0),
    ("logit_bias", {"1": 5}), ("tool_choice", "required"),
])
def test_every_field_the_server_cannot_honour_is_named_in_a_400(server, field, value):
    backend, url = server
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": EASY, "max_tokens": 2, field: value})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == field and field in error["message"] and error["type"] == "invalid_request_error"
    assert error["code"] == "unsupported_parameter"
    harmless = {"logprobs": False, "presence_penalty": 0, "response_format": {"type": "text"}, "tools": []}
    if field in harmless:  # the default value asks nothing of the server: accepted
        ok = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                        json={"messages": EASY, "max_tokens": 2, field: harmless[field]})
        assert ok.status_code == 200, ok.text


def test_two_unsupported_fields_are_both_named_and_stream_options_needs_stream(server):
    _, url = server
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "YOLO", "echo": True, "suffix": "end"})
    assert r.status_code == 400 and "echo" in r.json()["error"]["message"] and "suffix" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": EASY, "stream_options": {"include_usage": True}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": EASY, "stop": ["a", "b", "c", "d", "e"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"


# ---------------------------------------------------------------- the chat app and polo explain

def test_the_chat_apps_handlers_stream_growing_text_locally_and_through_the_server(tiny_run, server):
    from polo_lib.deploy import chat_app

    models = chat_app.load_models(tiny_run)
    steps = list(chat_app.explain_stream(models, PARAGRAPH, 24))
    assert steps[0] == "" and len(steps) > 3
    assert all(later.startswith(earlier) for earlier, later in zip(steps, steps[1:]))  # it only grows
    alone = inference.generate(models.tuned, [EASY], max_new_tokens=24)[0]
    assert steps[-1] == inference.shown_text(alone) == chat_app.explain(models, PARAGRAPH, 24)
    pairs = list(chat_app.compare_stream(models, LONG[0]["content"], False, 24))
    assert pairs[-1] == chat_app.compare(models, LONG[0]["content"], False, 24) and pairs[-1][0] != pairs[-1][1]
    # both grow at once: some step shows part of each answer (one after the other would not)
    assert any(0 < len(b) < len(pairs[-1][0]) and 0 < len(t) < len(pairs[-1][1]) for b, t in pairs), pairs
    chat = list(chat_app.chat_stream(models, "What is a grid cell?", [], 12))
    assert len(chat) > 2 and chat[-1] == chat_app.chat_reply(models, "What is a grid cell?", [], 12)
    # `polo chat --server`: the server's stream, the same text
    remote = chat_app.connect(server[1])
    remote_steps = list(chat_app.explain_stream(remote, PARAGRAPH, 24))
    assert len(remote_steps) > 3 and remote_steps[-1] == steps[-1]


def test_the_chat_app_says_when_an_answer_was_cut_and_sends_the_model_its_own_words_back(tiny_run, server):
    """An answer that reaches "max new tokens" ends with the cut note on a line of its own, loaded
    here or through the server (finish_reason "length"); an answer that ended has none; the next
    turn's prompt holds the answer as the model wrote it, without the note."""
    from polo_lib.deploy import chat_app

    models, remote = chat_app.load_models(tiny_run, with_base=False), chat_app.connect(server[1])
    note = "\n\n" + inference.cut_note(6)
    reply = chat_app.chat_reply(models, LONG[0]["content"], [], 6)
    alone = inference.generate(models.tuned, [chat_app._chat_of(LONG[0]["content"], [])], max_new_tokens=6)[0]
    assert alone.cut and reply == alone.text + note and alone.text
    assert chat_app.chat_reply(remote, LONG[0]["content"], [], 6) == reply
    assert remote.tuned.answer(chat_app._chat_of(LONG[0]["content"], []), 6) == reply
    history = [{"role": "user", "content": LONG[0]["content"]}, {"role": "assistant", "content": reply}]
    assert chat_app._chat_of("and then?", history)[-2] == {"role": "assistant", "content": alone.text}
    ended = inference.generate(models.tuned, [EASY], max_new_tokens=40, stop=[alone.text[:2]])[0]
    # an answer that ended (here at a stop string: the tiny model's EOS is rare) gets no note
    assert not ended.cut and inference.shown_text(ended) == ended.text


def test_polo_explain_shows_the_paragraph_being_written(tiny_run):
    """The live line shows a paragraph's explanation while it is written (a start of the finished
    text, not yet all of it), and counts the paragraphs done."""
    from polo_lib.deploy import explain

    lm = inference.with_tokenizer(inference.load_tuned(tiny_run.params(), tiny_run), inference.run_tokenizer(tiny_run))
    blocks = [explain.Block("paragraph", PARAGRAPH), explain.Block("paragraph", "Each box predicts a confidence.")]
    screen = io.StringIO()
    result = explain.explain(blocks, explain.local_answer(lm, file=screen, every_s=0), 24, 2)
    first = " ".join(result.blocks[0].korean.split())  # the line shows it on one line
    shown = [part.split("¶1: ", 1)[1].split("]")[0] for part in screen.getvalue().split("\r") if "¶1: " in part]
    assert first and any(s and s in first and not first.endswith(s) for s in shown), (first, shown)
    assert "2/2" in screen.getvalue()


def test_the_load_test_times_concurrent_streams(server, capsys):
    """`python -m benchmarks.serve_load URL 2 2 --stream`: first-token latency, each stream's own
    tokens/s and all streams' tokens/s, one JSON line."""
    from benchmarks import serve_load

    backend, url = server
    before = backend.stats.requests
    assert serve_load.main([url, "2", "2", "--max-tokens", "6", "--stream"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stream"] is True and result["concurrency"] == 2 and result["requests"] == 2
    assert 0 < result["first_token_s_median"] <= result["first_token_s_max"] <= result["latency_s_median"] * 2
    assert 0 < result["completion_tokens"] <= 2 * 6 and result["tokens_per_s"] > 0
    assert backend.stats.requests - before == 1 + 2  # the warm-up stream is sent but not counted
    with pytest.raises(SystemExit):
        serve_load.main([url, "2", "--stream", "--burst"])
