"""`polo chat RUN`: a Gradio app to talk to a run's model, compare it with its base, and
explain a paragraph with the Easy prompt.

Three tabs, one model pair (base, and base + the run's adapter), all through
inference.generate with the run's saved tokenizer, so what you see here is what evaluation
measured and what `polo serve` answers:

  Chat          multi-turn chat with the tuned model (the Easy system prompt first)
  Base vs tuned the same prompt to both models, answers side by side
  Explain       a paragraph wrapped in the Easy prompt, as in training

The handlers are plain functions (tested without a browser); `build_app` wires them up.

`polo chat --server URL` talks to a running `polo serve` instead of loading the model here (the
tuned model only; the key from --api-key or POLO_API_KEY, as the server takes it).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from .. import inference, prompts, runs

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline machine: no telemetry calls

MAX_NEW_TOKENS = 256  # ~128 Hangul syllables on SmolLM2; a slider lets the user change it


@dataclass
class Models:
    """The tuned model, optionally its base, a lock (one generation at a time: they share a CPU)."""
    tuned: Any
    base: Any | None
    run_id: str
    lock: threading.Lock


def load_models(run, with_base: bool = True) -> Models:
    """Base + adapter, and the base alone, both with the run's own tokenizer (template, EOS)."""
    cfg = run.params()
    tokenizer = inference.run_tokenizer(run)
    tuned = inference.with_tokenizer(inference.load_tuned(cfg, run), tokenizer)
    base = inference.with_tokenizer(inference.load_base(cfg), tokenizer) if with_base else None
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
        reply = self.client().chat.completions.create(model=self.model_id, messages=chat,
                                                      max_tokens=int(max_new_tokens))
        return reply.choices[0].message.content or ""


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


def _answer(models: Models, lm, chat: list[dict[str, str]], max_new_tokens: int) -> str:
    if isinstance(lm, Remote):  # the server batches and queues requests itself
        return lm.answer(chat, max_new_tokens)
    with models.lock:
        return inference.generate(lm, [chat], max_new_tokens=int(max_new_tokens), batch_size=1)[0].text


def chat_reply(models: Models, message: str, history: list[dict[str, Any]],
               max_new_tokens: int = MAX_NEW_TOKENS) -> str:
    """The tuned model's answer to `message` after `history` (Gradio's role/content dicts)."""
    chat = [{"role": "system", "content": prompts.SYSTEM_PROMPT}]
    chat += [{"role": m["role"], "content": _text(m["content"])} for m in history
             if m.get("role") in ("user", "assistant")]
    chat.append({"role": "user", "content": _text(message)})
    return _answer(models, models.tuned, chat, max_new_tokens)


def compare(models: Models, text: str, easy_prompt: bool = True,
            max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[str, str]:
    """(base answer, tuned answer) to the same chat: the Easy prompt around `text`, or `text` alone."""
    if not text.strip():
        return "", ""
    chat = prompts.build_messages(text) if easy_prompt else [{"role": "user", "content": text}]
    base = _answer(models, models.base, chat, max_new_tokens) if models.base is not None else \
        "(base model not loaded: start with `polo chat RUN`, without --no-base or --server)"
    return base, _answer(models, models.tuned, chat, max_new_tokens)


def explain(models: Models, paragraph: str, max_new_tokens: int = MAX_NEW_TOKENS) -> str:
    """The tuned model's easy-Korean explanation of a paragraph, with the training prompt."""
    if not paragraph.strip():
        return ""
    return _answer(models, models.tuned, prompts.build_messages(paragraph), max_new_tokens)


def build_app(models: Models):
    """The Gradio Blocks app (not launched)."""
    import gradio as gr

    with gr.Blocks(title=f"POLO Easy: {models.run_id}") as app:
        gr.Markdown(f"# POLO Easy\nrun `{models.run_id}`: the tuned model (base + LoRA adapter), "
                    "prompted with the chat template it was trained with.")
        tokens = gr.Slider(8, 1024, value=MAX_NEW_TOKENS, step=8, label="max new tokens")
        with gr.Tab("Chat"):
            gr.ChatInterface(lambda message, history, n: chat_reply(models, message, history, n),
                             additional_inputs=[tokens])
        with gr.Tab("Base vs tuned"):
            prompt = gr.Textbox(label="prompt", lines=5)
            wrap = gr.Checkbox(value=True, label="wrap in the Easy prompt (as in training)")
            go = gr.Button("Generate both")
            with gr.Row():
                base_out = gr.Textbox(label="base model", lines=10)
                tuned_out = gr.Textbox(label="tuned model", lines=10)
            go.click(lambda t, w, n: compare(models, t, w, n), [prompt, wrap, tokens], [base_out, tuned_out])
        with gr.Tab("Explain this paragraph"):
            paragraph = gr.Textbox(label="paragraph (e.g. from the YOLO paper)", lines=6)
            explain_btn = gr.Button("Explain in easy Korean")
            explanation = gr.Textbox(label="explanation", lines=10)
            explain_btn.click(lambda p, n: explain(models, p, n), [paragraph, tokens], [explanation])
    return app


def launch(run_id: str | None, host: str = "127.0.0.1", port: int = 7860, with_base: bool = True,
           block: bool = True, server: str | None = None, api_key: str | None = None):
    """Load the run's models (or connect to `server`) and open the app; `block=False` returns the
    running app (tests)."""
    models = connect(server, api_key) if server else load_models(runs.lookup(run_id), with_base)
    app = build_app(models)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, share=False,
               inbrowser=False, show_error=True)
    return app
