"""`polo chat RUN`: a Gradio app to talk to a run's model, compare it with its base, and
explain a paragraph with the Easy prompt.

Three tabs, one model pair (base, and base + the run's adapter), all through
inference.generate with the run's saved tokenizer, so what you see here is what evaluation
measured and what `polo serve` answers:

  Chat          multi-turn chat with the tuned model (the Easy system prompt first)
  Base vs tuned the same prompt to both models, answers side by side, both written at once
  Explain       a paragraph wrapped in the Easy prompt, as in training

Every tab streams: the text grows as tokens are generated (on the CPU demo an answer takes a
minute or more). An answer that reaches the "max new tokens" slider ends with a note saying it
was cut there (inference.cut_note), not mid-word as if finished. The handlers are generators of
the text so far (chat_stream, compare_stream, explain_stream), and plain functions give their
last value (tested without a browser); `build_app` wires the generators up. Leaving the page or
pressing Gradio's stop ends the generation at the next token.

`polo chat --server URL` talks to a running `polo serve` instead of loading the model here (the
tuned model only; the key from --api-key or POLO_API_KEY, as the server takes it).
"""
from __future__ import annotations

import copy
import os
import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .. import inference, prompts, runs

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline machine: no telemetry calls

MAX_NEW_TOKENS = 256  # ~128 Hangul syllables on SmolLM2; a slider lets the user change it
_CUT = "\n\n"  # the cut note goes on a line of its own after an answer cut at max new tokens


@dataclass
class Models:
    """The tuned model, optionally its base, a lock (one generation at a time: they share a CPU)."""
    tuned: Any
    base: Any | None
    run_id: str
    lock: threading.Lock


def load_models(run, with_base: bool = True) -> Models:
    """Base + adapter, and the base alone, both with the run's own tokenizer (template, EOS)."""
    from tqdm.auto import tqdm

    cfg = run.params()
    tokenizer = inference.run_tokenizer(run)
    # seconds each on the CPU demo, minutes for a 3B model: a bar with the models loaded and time left
    with tqdm(total=2 if with_base else 1, desc=f"loading run {run.id}: tuned", unit="model") as bar:
        tuned = inference.with_tokenizer(inference.load_tuned(cfg, run), tokenizer)
        bar.update(1)
        base = None
        if with_base:
            bar.set_description(f"loading run {run.id}: base")
            # "Base vs tuned" generates with both at once: a Rust tokenizer used by two threads raises
            # "Already borrowed", so the base gets an identical copy
            base = inference.with_tokenizer(inference.load_base(cfg), copy.deepcopy(tokenizer))
            bar.update(1)
    return Models(tuned, base, run.id, threading.Lock())


@dataclass
class Remote:
    """The tuned model behind an OpenAI-compatible server (`polo serve`), in place of a loaded one."""
    url: str
    api_key: str | None
    model_id: str

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url=self.url.rstrip("/") + "/v1", api_key=self.api_key or "no-key", max_retries=0)

    def answer(self, chat: list[dict[str, str]], max_new_tokens: int) -> str:
        """The whole answer, with the cut note when the server says it was cut ("length")."""
        reply = self.client().chat.completions.create(model=self.model_id, messages=chat,
                                                      max_tokens=int(max_new_tokens))
        note = _CUT + inference.cut_note(int(max_new_tokens)) if reply.choices[0].finish_reason == "length" else ""
        return (reply.choices[0].message.content or "") + note

    def pieces(self, chat: list[dict[str, str]], max_new_tokens: int) -> Iterator[str]:
        """The answer's text pieces as the server streams them, then the cut note when the server
        says it was cut ("length"); closing the iterator closes the connection, and the server
        stops generating."""
        finish = None
        with self.client().chat.completions.create(model=self.model_id, messages=chat, stream=True,
                                                   max_tokens=int(max_new_tokens)) as stream:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
        if finish == "length":
            yield _CUT + inference.cut_note(int(max_new_tokens))


def connect(url: str, api_key: str | None = None) -> Models:
    """Models answered by the server at `url`; a PoloError when it cannot be reached or refuses the key."""
    import openai

    from ..errors import PoloError

    probe = Remote(url, api_key, "")
    try:
        served = [m.id for m in probe.client().models.list().data]
    except openai.AuthenticationError:
        raise PoloError(f"the server at {url} refused the API key: give the key it was started with "
                        "(--api-key, or POLO_API_KEY in the environment).") from None
    except openai.APIConnectionError:
        raise PoloError(f"no server answers at {url}: start one with `polo serve RUN`, or check the URL.") from None
    if not served:
        raise PoloError(f"the server at {url} serves no model.")
    return Models(Remote(url, api_key, served[0]), None, served[0], threading.Lock())


def _text(content: Any) -> str:
    """Gradio message content as text: a string, or a list of parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, (list, tuple)):
        return "".join(_text(c) for c in content)
    return str(content or "")


def _streams(models: Models, lms: Sequence[Any], chat: list[dict[str, str]],
             max_new_tokens: int) -> Iterator[list[str]]:
    """Each model's answer to `chat` so far, generated at the same time, after every new piece.

    One thread per model (a local one through inference.generate's on_text, a Remote through the
    server's stream), under `models.lock` for local models (two users' answers do not fight over
    the cores). Closing the iterator (Gradio does when the user leaves or presses stop) stops
    every generation at its next token.
    """
    events: queue.Queue = queue.Queue()
    stop = threading.Event()

    def one(k: int, lm) -> None:
        try:
            if isinstance(lm, Remote):  # the server batches and queues requests itself
                pieces = lm.pieces(chat, max_new_tokens)
                for piece in pieces:
                    if stop.is_set():
                        pieces.close()  # closes the connection: the server stops this answer
                        break
                    events.put((k, piece))
            else:
                def done(_: int, gen: inference.Generation) -> None:
                    if gen.cut:  # after its last piece: on_done follows on_text's pieces
                        events.put((k, _CUT + inference.cut_note(gen.new_tokens)))

                inference.generate(lm, [chat], max_new_tokens=int(max_new_tokens), batch_size=1,
                                   on_text=lambda _, piece: events.put((k, piece)), on_done=done,
                                   cancelled=lambda _: stop.is_set())
        except Exception as e:  # noqa: BLE001 - handed to the reader, which raises it in Gradio's handler
            events.put((k, e))

    def all_of_them() -> None:
        workers = [threading.Thread(target=one, args=(k, lm), daemon=True) for k, lm in enumerate(lms)]
        try:
            if any(not isinstance(lm, Remote) for lm in lms):
                models.lock.acquire()
            try:
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
            finally:
                if any(not isinstance(lm, Remote) for lm in lms):
                    models.lock.release()
        finally:
            events.put(None)

    threading.Thread(target=all_of_them, name="polo-chat-generate", daemon=True).start()
    texts = [""] * len(lms)
    yield list(texts)  # empty first: a new question clears the last answer at once
    try:
        while (event := events.get()) is not None:
            k, piece = event
            if isinstance(piece, BaseException):
                raise piece
            texts[k] += piece
            yield list(texts)
    finally:
        stop.set()


def _last(values: Iterator[Any], empty: Any) -> Any:
    """The last value an iterator yields (`empty` when it yields none): a stream's finished text."""
    tail = deque(values, maxlen=1)
    return tail[0] if tail else empty


def _chat_of(message: str, history: list[dict[str, Any]]) -> list[dict[str, str]]:
    chat = [{"role": "system", "content": prompts.SYSTEM_PROMPT}]
    for m in history:
        if m.get("role") in ("user", "assistant"):
            text = _text(m["content"])  # an answer shown with its cut note goes back as the model wrote it
            chat.append({"role": m["role"], "content": inference.without_cut_note(text) if m["role"] == "assistant"
                         else text})
    chat.append({"role": "user", "content": _text(message)})
    return chat


def chat_stream(models: Models, message: str, history: list[dict[str, Any]],
                max_new_tokens: int = MAX_NEW_TOKENS) -> Iterator[str]:
    """The tuned model's answer to `message` after `history` (Gradio's role/content dicts), growing."""
    for (text,) in _streams(models, [models.tuned], _chat_of(message, history), max_new_tokens):
        yield text


def chat_reply(models: Models, message: str, history: list[dict[str, Any]],
               max_new_tokens: int = MAX_NEW_TOKENS) -> str:
    """The tuned model's whole answer to `message` after `history`."""
    return _last(chat_stream(models, message, history, max_new_tokens), "")


NO_BASE = "(base model not loaded: start with `polo chat RUN`, without --no-base or --server)"


def compare_stream(models: Models, text: str, easy_prompt: bool = True,
                   max_new_tokens: int = MAX_NEW_TOKENS) -> Iterator[tuple[str, str]]:
    """(base answer, tuned answer) to the same chat, both growing at once: the Easy prompt around
    `text`, or `text` alone."""
    if not text.strip():
        yield "", ""
        return
    chat = prompts.build_messages(text) if easy_prompt else [{"role": "user", "content": text}]
    if models.base is None:
        for (tuned,) in _streams(models, [models.tuned], chat, max_new_tokens):
            yield NO_BASE, tuned
        return
    for base, tuned in _streams(models, [models.base, models.tuned], chat, max_new_tokens):
        yield base, tuned


def compare(models: Models, text: str, easy_prompt: bool = True,
            max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[str, str]:
    """(base answer, tuned answer), whole."""
    return _last(compare_stream(models, text, easy_prompt, max_new_tokens),
                 (NO_BASE if models.base is None else "", ""))


def explain_stream(models: Models, paragraph: str, max_new_tokens: int = MAX_NEW_TOKENS) -> Iterator[str]:
    """The tuned model's easy-Korean explanation of a paragraph, with the training prompt, growing."""
    if not paragraph.strip():
        yield ""
        return
    for (text,) in _streams(models, [models.tuned], prompts.build_messages(paragraph), max_new_tokens):
        yield text


def explain(models: Models, paragraph: str, max_new_tokens: int = MAX_NEW_TOKENS) -> str:
    """The whole explanation of a paragraph."""
    return _last(explain_stream(models, paragraph, max_new_tokens), "")


def build_app(models: Models):
    """The Gradio Blocks app (not launched)."""
    import gradio as gr

    with gr.Blocks(title=f"POLO Easy: {models.run_id}") as app:
        gr.Markdown(f"# POLO Easy\nrun `{models.run_id}`: the tuned model (base + LoRA adapter), "
                    "prompted with the chat template it was trained with.")
        tokens = gr.Slider(8, 1024, value=MAX_NEW_TOKENS, step=8, label="max new tokens")
        # Gradio streams a handler that is a generator function (a lambda returning a generator
        # would be shown as one object), hence the small defs
        def chat_handler(message, history, n):
            yield from chat_stream(models, message, history, n)

        def compare_handler(text, wrap, n):
            yield from compare_stream(models, text, wrap, n)

        def explain_handler(paragraph, n):
            yield from explain_stream(models, paragraph, n)

        with gr.Tab("Chat"):
            gr.ChatInterface(chat_handler, additional_inputs=[tokens])
        with gr.Tab("Base vs tuned"):
            prompt = gr.Textbox(label="prompt", lines=5)
            wrap = gr.Checkbox(value=True, label="wrap in the Easy prompt (as in training)")
            go = gr.Button("Generate both")
            with gr.Row():
                base_out = gr.Textbox(label="base model", lines=10)
                tuned_out = gr.Textbox(label="tuned model", lines=10)
            go.click(compare_handler, [prompt, wrap, tokens], [base_out, tuned_out])
        with gr.Tab("Explain this paragraph"):
            paragraph = gr.Textbox(label="paragraph (e.g. from the YOLO paper)", lines=6)
            explain_btn = gr.Button("Explain in easy Korean")
            explanation = gr.Textbox(label="explanation", lines=10)
            explain_btn.click(explain_handler, [paragraph, tokens], [explanation])
    return app


def launch(run_id: str | None, host: str = "127.0.0.1", port: int = 7860, with_base: bool = True,
           block: bool = True, server: str | None = None, api_key: str | None = None):
    """Load the run's models (or connect to `server`) and open the app; `block=False` returns the
    running app (tests)."""
    models = connect(server, api_key) if server else load_models(runs.lookup(run_id), with_base)
    return open_app(build_app(models), host, port, block)


def open_app(app, host: str = "127.0.0.1", port: int = 7860, block: bool = True, command: str = "polo chat"):
    """Start the app on host:port and say where, in one line of our own (`command`: who says it):
    Gradio's launch messages stay unsaid (its "To create a public link, set `share=True`" offers what
    `polo chat` and `polo rate` do not)."""
    app.launch(server_name=host, server_port=port, prevent_thread_lock=True, share=False,
               inbrowser=False, show_error=True, quiet=True)
    print(f"{command}: open {app.local_url} in a browser (Ctrl+C stops it)", flush=True)
    if block:
        app.block_thread()
    return app
