"""polo draft: a paper drafted by a teacher over an OpenAI-compatible API into records to review. The teacher
here is a scripted server (an outside service no test can reach): deterministic Korean for each paragraph,
and on demand HTTP 429, 500 and a request slower than the timeout; a draft killed halfway resumes into the
same file an uninterrupted one writes; prepare refuses the drafts until a person reviewed them."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from polo_lib import cli, data, judge, model, params, paths
from polo_lib.deploy import draft
from polo_lib.errors import DataError
from polo_lib.metrics import english_term_spans, load_glossary

PAPER = paths.DATA_DIR / "papers" / "dense_detection_notes.md"
GLOSSARY = load_glossary()


def korean_for(paragraph: str) -> str:
    """The scripted teacher's answer: Hangul derived from the paragraph (about half its length), keeping the
    paragraph's glossary terms in English, as a careful teacher would."""
    letters = [c for c in paragraph if c.isalpha()]
    body = "".join(chr(0xAC00 + (ord(c) * 31 + i) % 11172) for i, c in enumerate(letters[: len(letters) // 2]))
    words = [body[i:i + 4] for i in range(0, len(body), 4)]
    terms = sorted({GLOSSARY[i].en for _, _, i in english_term_spans(paragraph, GLOSSARY)})
    return (" ".join(words) + "합니다. " + " ".join(terms)).strip()


class Teacher(ThreadingHTTPServer):
    """An OpenAI-compatible /v1 with one model; `plan`: the first requests about paragraphs holding a key get
    these answers in turn ("429", "500", "slow": slower than the client's timeout), then the real one."""

    daemon_threads = True

    def __init__(self, plan=None, delay=0.0):
        super().__init__(("127.0.0.1", 0), Handler)
        self.plan = {k: list(v) for k, v in (plan or {}).items()}
        self.delay, self.requests, self.lock = delay, 0, threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: dict) -> None:
        raw = json.dumps(body, ensure_ascii=False).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and went away: as it should
            pass

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "teacher-7b", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        paragraph = body["messages"][-1]["content"].split("\n\n", 1)[1]
        server = self.server
        with server.lock:
            server.requests += 1
            step = next((steps.pop(0) for key, steps in server.plan.items() if key in paragraph and steps), None)
        time.sleep(server.delay)
        if step == "slow":
            time.sleep(1.5)
        if step in ("429", "500"):
            return self._send(int(step), {"error": {"message": f"scripted {step}"}})
        if step == "400":  # what polo serve says of a prompt over the model's context
            return self._send(400, {"error": {"message": "the prompt is 1627 tokens and max_tokens is 192: together "
                                              "over the model's max_seq_length of 1024 tokens",
                                              "code": "context_length_exceeded"}})
        answer = korean_for(paragraph)
        self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
                         "usage": {"total_tokens": len(paragraph.split()) + len(answer.split())}})


@pytest.fixture
def teacher():
    made = []

    def start(**kwargs):
        made.append(Teacher(**kwargs))
        return made[-1]

    yield start
    for server in made:
        server.stop()


def asker(server, **kwargs):
    return judge.Asker(server.url, "teacher-7b", backoff_s=0.01, timeout_s=kwargs.pop("timeout_s", 5.0), **kwargs)


def test_paragraphs_are_numbered_by_their_sections_headings():
    blocks = draft.split_paper(draft.read_paper(PAPER))
    units = draft.number(blocks)
    assert len(units) == 31 and len({u.id for u in units}) == 31
    assert [u.id for u in units][:7] == ["1.1.1", "1.2.1", "1.3.1", "1.4.1", "1.5.1", "1.6.1", "2.1.1"]
    assert units[-1].id == "10.2.1" and units[6].text.startswith("The backbone is a convolutional")
    # the teacher's chat: the Easy prompt with this paragraph's glossary terms, reviewed examples, the paragraph
    chat = draft.messages(units[6].text, draft.shots(2), GLOSSARY)
    assert [t["role"] for t in chat] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert chat[-1]["content"].endswith(units[6].text) and chat[2]["content"].startswith("사람은 사진을")


def test_a_paper_is_drafted_through_429_500_and_a_timeout_with_every_record_marked_draft(tmp_path, teacher):
    server = teacher(plan={"The backbone is a convolutional": ["429", "500"], "Single-pass detectors": ["slow"]})
    out = tmp_path / "dense.jsonl"
    ask = asker(server, timeout_s=0.5)
    result = draft.draft_paper(PAPER, ask, out, concurrency=4, show_progress=False)
    assert result.complete and (result.drafted, result.skipped, result.failed) == (31, 0, [])
    assert result.http_retries == 3 and server.requests == 31 + 3
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == [u.id for u in draft.number(draft.split_paper(draft.read_paper(PAPER)))]
    p_hash = draft.prompt_hash(draft.shots(2))
    for r in records:
        assert (r["status"], r["source"], r["prompt_hash"]) == ("draft", "teacher:teacher-7b", p_hash)
        assert r["simplified"] == korean_for(r["original"]) and r["tokens"] > 0
    assert result.tokens == sum(r["tokens"] for r in records)
    # a teacher that keeps failing: the paragraph is listed, not written; the next call asks only it
    stubborn = teacher(plan={"Anchors bring hyperparameters": ["500"] * 10})
    again = draft.draft_paper(PAPER, asker(stubborn, http_retries=2), tmp_path / "partial.jsonl",
                              show_progress=False)
    assert again.drafted == 30 and len(again.failed) == 1 and "HTTP 500" in again.failed[0]
    assert not again.complete and len((tmp_path / "partial.jsonl").read_text().splitlines()) == 30


def test_a_draft_killed_halfway_resumes_into_the_file_an_uninterrupted_draft_writes(tmp_path, teacher):
    server = teacher(delay=0.2)
    whole = tmp_path / "whole.jsonl"
    assert cli.main(["draft", str(PAPER), "--teacher", server.url, "--model", "teacher-7b", "--out", str(whole),
                     "--concurrency", "2"]) == 0
    cut = tmp_path / "cut.jsonl"
    args = [sys.executable, "-m", "polo_lib.cli", "draft", str(PAPER), "--teacher", server.url, "--model",
            "teacher-7b", "--out", str(cut), "--concurrency", "1"]
    proc = subprocess.Popen(args, cwd=paths.PROJ_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if cut.is_file() and len(cut.read_text(encoding="utf-8").splitlines()) >= 5:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    halfway = len(cut.read_text(encoding="utf-8").splitlines())
    assert 5 <= halfway < 31
    before = server.requests
    assert cli.main(["draft", str(PAPER), "--teacher", server.url, "--model", "teacher-7b", "--out", str(cut),
                     "--json"]) == 0
    assert server.requests - before == 31 - halfway  # only the missing paragraphs were asked
    assert cut.read_bytes() == whole.read_bytes()


def test_a_bad_paper_or_an_unreachable_teacher_is_refused_before_anything_is_written(tmp_path, capsys):
    nowhere = ["--teacher", "http://127.0.0.1:9/v1", "--model", "m", "--out", str(tmp_path / "x.jsonl")]
    assert cli.main(["draft", str(tmp_path / "missing.md"), *nowhere]) != 0
    assert "missing.md: no such file" in capsys.readouterr().err
    assert cli.main(["draft", str(PAPER), *nowhere]) != 0
    assert "cannot reach the teacher at http://127.0.0.1:9/v1" in capsys.readouterr().err
    assert cli.main(["draft", str(PAPER), *nowhere, "--api-key-env", "TEACHER_KEY_UNSET"]) != 0
    assert "TEACHER_KEY_UNSET" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_a_prompt_too_long_for_the_teacher_says_to_show_fewer_examples(tmp_path, teacher, capsys):
    server = teacher(plan={"": ["400"] * 40})  # every request refused, as polo serve refuses an overlong prompt
    assert cli.main(["draft", str(PAPER), "--teacher", server.url, "--model", "teacher-7b", "--out",
                     str(tmp_path / "d.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "31 request(s) refused by the teacher" in err and "--shots 1 or 0" in err


def test_prepare_refuses_drafts_until_reviewed_and_trains_on_accepted_and_edited_ones(tmp_path, teacher,
                                                                                     tiny_model_dir):
    drafts = tmp_path / "dense.jsonl"
    assert draft.draft_paper(PAPER, asker(teacher()), drafts, show_progress=False).complete
    cfg = params.load("smoke", overrides={"data.raw_file": ["data/raw/yolo_v1.json", str(drafts)],
                                          "data.processed_name": "with-drafts"})
    tokenizer = model.load_tokenizer(cfg.model)
    with pytest.raises(DataError, match=r"31 of 31 records are a teacher's drafts nobody reviewed .* "
                                        r"checks.include_drafts=true"):
        data.prepare(cfg.data, tokenizer, cfg.model.max_seq_length, cfg.checks)
    assert not data.processed_path(cfg.data).exists()
    # the review: most accepted, two edited (the person's Korean), three rejected
    records = [json.loads(line) for line in drafts.read_text(encoding="utf-8").splitlines()]
    for i, r in enumerate(records):
        r["status"] = "rejected" if i < 3 else "edited" if i < 5 else "accepted"
        if r["status"] == "edited":
            r["simplified"] = "사람이 고친 설명입니다. " + r["simplified"]
    drafts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    prepared = data.prepare(cfg.data, tokenizer, cfg.model.max_seq_length, cfg.checks)
    ids = {e["id"] for split in prepared.examples.values() for e in split}
    assert not any(i.startswith("dense/") and i[len("dense/"):] in ("1.1", "1.2", "1.3") for i in ids)  # rejected
    assert sum(i.startswith("dense/") for i in ids) == 28
    assert prepared.stats["review"]["status"] == {"hand-written": 234, "rejected": 3, "edited": 2, "accepted": 26}
    p_hash = draft.prompt_hash(draft.shots(2))
    assert prepared.stats["review"]["teachers"] == [f"teacher:teacher-7b (prompt {p_hash})"]
    data.save(prepared, cfg.data)
    card = (data.processed_path(cfg.data) / "README.md").read_text(encoding="utf-8")
    assert f"| dense | `{drafts}` | `{drafts.with_suffix('.md')}` | not stated |" in card  # polo draft's note
    assert "license: other" in card  # one paper without a stated licence: not the others' CC BY 4.0
    assert "| accepted | 26 |" in card and f"Drafted by teacher:teacher-7b (prompt {p_hash})." in card
    # drafts trained on as they are only when asked, and the run's params say so
    records[10]["status"] = "draft"
    drafts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    loose = params.load("smoke", overrides={"data.raw_file": ["data/raw/yolo_v1.json", str(drafts)],
                                            "data.processed_name": "with-drafts", "checks.include_drafts": True})
    assert data.prepare(loose.data, tokenizer, loose.model.max_seq_length, loose.checks).stats["review"][
        "status"]["draft"] == 1
    assert "include_drafts: true" in loose.to_yaml()


def test_the_prompt_hash_changes_with_the_examples():
    assert draft.prompt_hash(draft.shots(2)) != draft.prompt_hash(draft.shots(3))
    assert draft.prompt_hash(draft.shots(2)) == draft.prompt_hash(draft.shots(2))


def test_the_review_form_writes_every_click_at_once_and_reopens_at_the_first_draft(tmp_path, teacher):
    """The notebook's form driven through its own buttons: Accept, an edit saved, an Accept after changing the
    text (kept as an edit), a Reject; each click is in the file before the next; a new form opens at the first
    record still a draft, and once all are decided prepare's review counts are these."""
    from polo_lib.data import review

    drafts = tmp_path / "dense.jsonl"
    assert draft.draft_paper(PAPER, asker(teacher()), drafts, show_progress=False).complete
    made = review.form(drafts)
    p = made.parts
    assert made.current()["id"] == "1.1.1" and p["counts"].value.startswith("31 of 31 left to review")
    assert p["answer"].value == made.current()["simplified"]
    p["accept"].click()
    assert review.read(drafts)[0]["status"] == "accepted" and made.current()["id"] == "1.2.1"
    p["answer"].value = "사람이 고친 쉬운 설명입니다."
    p["edit"].click()
    second = review.read(drafts)[1]
    assert (second["status"], second["simplified"]) == ("edited", "사람이 고친 쉬운 설명입니다.")
    p["answer"].value = made.current()["simplified"] + " 한 문장 더."
    p["accept"].click()  # accepted with a change: an edit
    assert review.read(drafts)[2]["status"] == "edited" and review.read(drafts)[2]["simplified"].endswith("더.")
    p["reject"].click()
    assert review.read(drafts)[3]["status"] == "rejected"
    assert p["counts"].value.startswith("27 of 31 left to review; accepted 1, edited 2, rejected 1")
    again = review.form(drafts)  # a new session: at the first draft, nothing lost
    assert again.current()["id"] == "1.5.1"
    for _ in range(27):
        again.parts["accept"].click()
    assert again.current() is None and again.parts["accept"].disabled
    assert "Every record is reviewed" in again.parts["source"].value
    assert review.counts(review.read(drafts)) == {"draft": 0, "accepted": 28, "edited": 2, "rejected": 1}
    with pytest.raises(DataError, match="an edit needs the corrected Korean"):
        review.decide(drafts, "1.1.1", "edited", "  ")


def test_the_review_notebook_opens_the_form_on_a_drafts_file(tmp_path, teacher):
    import papermill as pm

    drafts = tmp_path / "dense.jsonl"
    assert draft.draft_paper(PAPER, asker(teacher()), drafts, show_progress=False).complete
    out = tmp_path / "review.ipynb"
    pm.execute_notebook(str(paths.NOTEBOOKS_DIR / "review_data.ipynb"), str(out), kernel_name="python3",
                        parameters={"drafts_file": str(drafts)}, cwd=str(paths.NOTEBOOKS_DIR), progress_bar=False)
    shown = json.loads(out.read_text(encoding="utf-8"))
    texts = [str(o.get("data", {}).get("text/plain", "")) for c in shown["cells"] for o in c.get("outputs", [])]
    assert any("31 of 31 left to review" in t for t in texts), texts
    assert any("'draft': 31" in t for t in texts), texts


def test_the_draft_notebook_makes_the_same_calls_and_shows_the_drafts(tmp_path, teacher):
    import papermill as pm

    server, out = teacher(), tmp_path / "dense.jsonl"
    executed = tmp_path / "draft.ipynb"
    pm.execute_notebook(str(paths.NOTEBOOKS_DIR / "draft_data.ipynb"), str(executed), kernel_name="python3",
                        parameters={"teacher": server.url, "model": "teacher-7b", "out": str(out), "shots": 1},
                        cwd=str(paths.NOTEBOOKS_DIR), progress_bar=False)
    records = draft.read_drafts(out)
    assert len(records) == 31 and {r["status"] for r in records} == {"draft"}
    assert {r["prompt_hash"] for r in records} == {draft.prompt_hash(draft.shots(1))}
    shown = json.loads(executed.read_text(encoding="utf-8"))
    texts = [str(o.get("data", {}).get("text/plain", "")) for c in shown["cells"] for o in c.get("outputs", [])]
    assert any("drafted=31" in t for t in texts) and any("10.2.1" in t for t in texts)
    with pytest.raises(pm.PapermillExecutionError, match="the teacher needs its endpoint URL"):
        pm.execute_notebook(str(paths.NOTEBOOKS_DIR / "draft_data.ipynb"), str(tmp_path / "none.ipynb"),
                            kernel_name="python3", cwd=str(paths.NOTEBOOKS_DIR), progress_bar=False)
