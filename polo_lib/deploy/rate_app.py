"""`polo rate RUN`: a Gradio page for blind human ratings of a run's answers.

One example at a time: the source paragraph, and two answers to it as "answer A" and "answer B"
(the tuned model's and the base model's, or another run's tuned model's with --against), in an
order the page never tells (ratings.order: seeded per rater and example). The rater presses
"A better", "B better" or "tie", with an optional note and an optional corrected answer; the
rating is appended to the evaluation's ratings.jsonl before the next example shows, so closing
the page loses nothing, and opening it again shows the first example this rater has not rated.

No model is loaded: the answers are the evaluation's (predictions.jsonl), the ones its metrics
scored. The handlers are plain functions of the task and the rater (`view`, `rate`), tested
without a browser; `build_app` wires them up.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .. import ratings
from .chat_app import open_app

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline machine: no telemetry calls

BUTTONS = {"A better": "A", "B better": "B", "tie": "tie"}  # label -> ratings.CHOICES


@dataclass(frozen=True)
class View:
    """What the page shows: the example to rate (None once every one is rated), where the rater
    stands, the source paragraph, answers A and B."""
    example_id: str | None
    status: str
    original: str
    a: str
    b: str


def view(task: ratings.Task, rater: str) -> View:
    """The first example `rater` has not rated, in their hidden order."""
    at, total = ratings.position(task, rater), len(task.pairs)
    if at >= total:
        return View(None, f"**All {total} examples rated, {rater}: thank you.** Your ratings are in "
                          f"`{task.path}`; `polo rate {task.run_id} --results` sums them up.", "", "", "")
    pair = task.pairs[at]
    a, b = ratings.order(rater, task.against, pair.id)
    return View(pair.id, f"Example {at + 1} of {total} (id `{pair.id}`), rater **{rater}**.",
                pair.original, pair.answers[a], pair.answers[b])


def rate(task: ratings.Task, rater: str, example_id: str | None, choice: str, note: str = "",
         correction: str = "") -> View:
    """Save the rating of the example shown (appended at once), then the next view. The example
    comes from the page's state, not from a position: a second tab cannot shift it."""
    if example_id is not None:
        ratings.record(task, rater, example_id, choice, note, correction)
    return view(task, rater)


def build_app(task: ratings.Task, rater: str):
    """The Gradio Blocks page (not launched)."""
    import gradio as gr

    rater = ratings.check_rater(rater)
    other = "the base model" if task.against == ratings.BASE else f"run {task.against}"
    with gr.Blocks(title=f"POLO Easy: rate {task.run_id}") as app:
        gr.Markdown(f"# Which answer is better?\nRun `{task.run_id}`, evaluation `{task.evaluation_id}`: "
                    f"{len(task.pairs)} paragraphs, each explained by two models ({other} is one of them, "
                    "in an order the page does not tell). Judge which answer explains the paragraph in easy, "
                    "correct Korean without losing or inventing facts. Every rating is saved at once.")
        current = gr.State(None)
        status = gr.Markdown()
        source = gr.Textbox(label="source paragraph", lines=4, interactive=False)
        with gr.Row():
            answer_a = gr.Textbox(label="answer A", lines=8, interactive=False)
            answer_b = gr.Textbox(label="answer B", lines=8, interactive=False)
        with gr.Row():
            note = gr.Textbox(label="note (optional)", lines=3)
            correction = gr.Textbox(label="corrected answer (optional): the answer as it should be", lines=3)
        with gr.Row():
            buttons = [gr.Button(label, variant="primary" if label != "tie" else "secondary") for label in BUTTONS]
        outputs = [current, status, source, answer_a, answer_b, note, correction, *buttons]

        def shown(v: View):
            more = v.example_id is not None
            return (v.example_id, v.status, v.original, v.a, v.b, "", "",
                    *(gr.update(visible=more) for _ in buttons))

        app.load(lambda: shown(view(task, rater)), outputs=outputs)
        for button, choice in zip(buttons, BUTTONS.values()):
            def handler(example_id, note_text, correction_text, choice=choice):
                return shown(rate(task, rater, example_id, choice, note_text, correction_text))

            button.click(handler, [current, note, correction], outputs)
    return app


def launch(task: ratings.Task, rater: str, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Open the page for `rater`; `block=False` returns the running app (tests)."""
    return open_app(build_app(task, rater), host, port, block, command="polo rate")
