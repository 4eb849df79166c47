"""`polo judge`: an LLM judge over any OpenAI-compatible endpoint, against a scripted test server that
returns known verdicts (the aggregation, the position-bias accounting, retries after 500s and
timeouts, unparseable replies asked again then counted, resume, agreement with people's ratings,
refusals before any judging), and against a real `polo serve` of the tiny model, whose replies never
parse and must be counted, not crash.

The evaluated runs are made without a model: a run folder with an adapter_config.json (nothing
loads it) and an evaluation whose predictions.jsonl the test writes, through runs' own functions.
"""
from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from adapter_runs import free_port
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from polo_lib import cli, judge, params, runs, stats
from polo_lib.errors import EndpointError, ParamsError, RunError

# Six examples: the fair judge prefers the answer that holds GOOD; tuned wins 4, loses 1, ties 1.
TUNED_TEXT = ["GOOD 1", "GOOD 2", "GOOD 3", "GOOD 4", "weak 5", "plain 6"]
BASE_TEXT = ["weak 1", "weak 2", "weak 3", "weak 4", "GOOD 5", "plain six"]
RUBRIC = "Judge A and B. End with VERDICT: A, VERDICT: B or VERDICT: TIE."


# ---------------------------------------------------------------- a scripted OpenAI-compatible judge

class Script:
    """What the test server answers. mode: fair (the answer with GOOD wins), always_a, or garbled
    (no verdict line); the first `fail_first` requests of each chat get HTTP 500 and the next
    `slow_first` ones answer after `slow_s` seconds; the first `garble_first` replies of each chat
    have no verdict line. Every request is kept."""

    def __init__(self):
        self.mode, self.fail_first, self.slow_first, self.slow_s, self.garble_first = "fair", 0, 0, 1.0, 0
        self.key: str | None = None
        self.requests: list[dict] = []
        self.seen: Counter = Counter()
        self.lock = threading.Lock()

    def reply(self, body: dict) -> tuple[int, str, float]:
        """(HTTP status, the reply's text, seconds to wait first)."""
        user = body["messages"][1]["content"]
        with self.lock:
            self.requests.append(body)
            self.seen[user] += 1
            n = self.seen[user]
        if n <= self.fail_first:
            return 500, "", 0.0
        if n <= self.fail_first + self.slow_first:
            return 200, "late VERDICT: A", self.slow_s
        if self.mode == "garbled" or len(body["messages"]) == 2 and n <= self.fail_first + self.slow_first + \
                self.garble_first:
            return 200, "Both are fine.\nI lean to A.", 0.0
        a, b = re.search(r"Answer A:\n<<<\n(.*?)\n>>>\n\nAnswer B:\n<<<\n(.*?)\n>>>", user, re.S).groups()
        if self.mode == "always_a":
            return 200, "A reads first.\nVERDICT: A", 0.0
        verdict = "A" if "GOOD" in a and "GOOD" not in b else "B" if "GOOD" in b and "GOOD" not in a else "TIE"
        return 200, f"Reasons: one holds GOOD.\n\nVERDICT: {verdict}\n", 0.0


def scripted_app(script: Script):
    app = FastAPI()

    def refused(request: Request):
        if script.key and request.headers.get("authorization") != f"Bearer {script.key}":
            return JSONResponse(status_code=401, content={"error": {"message": "bad key"}})
        return None

    @app.get("/v1/models")
    def models(request: Request):
        return refused(request) or {"object": "list", "data": [{"id": "judge-1", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if no := refused(request):
            return no
        status, text, wait = script.reply(await request.json())
        await asyncio.sleep(wait)
        if status != 200:
            return JSONResponse(status_code=status, content={"error": {"message": "scripted failure"}})
        return {"id": "x", "object": "chat.completion", "model": "judge-1",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    return app


@pytest.fixture(scope="module")
def judge_server():
    import uvicorn

    script = Script()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(scripted_app(script), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the scripted judge did not start"
        time.sleep(0.05)
    yield script, f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def script(judge_server):
    """The module's scripted judge, reset to a fair judge with no failures."""
    s = judge_server[0]
    s.__init__()
    return s


@pytest.fixture
def url(judge_server):
    return judge_server[1]


# ---------------------------------------------------------------- evaluated runs without a model

def evaluate_with(run: runs.Run, tuned: list[str], base: list[str], ids: list[str] | None = None,
                  originals: list[str] | None = None) -> runs.Evaluation:
    """A finished evaluation of `run` whose predictions.jsonl holds these answers (no model runs)."""
    cfg = params.load("smoke")
    run = runs.open_run(cfg, run.id, stage="evaluate", may_differ=("evaluation",))
    evaluation = runs.start_evaluation(run, cfg)
    ids = ids or [f"1.{i}" for i in range(len(tuned))]
    originals = originals or [f"Paragraph {i} about grid cells." for i in ids]
    with open(evaluation.path / "predictions.jsonl", "w", encoding="utf-8") as f:
        for i, o, t, b in zip(ids, originals, tuned, base):
            f.write(json.dumps({"id": i, "original": o, "reference": "쉬운 설명", "base": b, "tuned": t},
                               ensure_ascii=False) + "\n")
    runs.finish_stage(run, "evaluate")
    return evaluation


def bare_run() -> runs.Run:
    """A finished run with an adapter folder (an empty config: nothing here loads it), not evaluated."""
    run = runs.open_run(params.load("smoke"))
    (run.adapter / "adapter_config.json").write_text("{}", encoding="utf-8")
    run.update_manifest(status="finished")
    return run


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("POLO_OUTPUTS", str(tmp_path / "outputs"))
    return tmp_path / "outputs"


@pytest.fixture
def evaluated(outputs):
    run = bare_run()
    evaluate_with(run, TUNED_TEXT, BASE_TEXT)
    return run


@pytest.fixture
def rubric_file(tmp_path):
    path = tmp_path / "rubric.md"
    path.write_text(RUBRIC, encoding="utf-8")
    return path


def polo_judge(capsys, run, url, rubric, *extra) -> tuple[int, dict | None, str]:
    """`polo judge RUN --json ...`: (exit code, the JSON printed or None, stderr)."""
    rc = cli.main(["judge", str(run.path), "--endpoint", url, "--model", "judge-1", "--rubric", str(rubric),
                   "--json", *extra])
    out, err = capsys.readouterr()
    return rc, json.loads(out) if out.strip() else None, err


def lines(run) -> list[dict]:
    return judge.read_verdicts(run.evaluation().path / "judge.jsonl")


def fast_asker(url: str, **options) -> judge.Asker:
    return judge.Asker(url, "judge-1", **{"backoff_s": 0.0, "timeout_s": 5.0, **options})


# ---------------------------------------------------------------- what the verdicts add up to

def test_a_fair_judge_gives_the_known_win_rate_with_its_bootstrap_interval(script, url, evaluated, rubric_file,
                                                                            capsys):
    rc, out, _ = polo_judge(capsys, evaluated, url, rubric_file)
    assert rc == 0
    res = out["results"]
    assert (res["examples"], res["judged"], res["wins"], res["losses"], res["ties"]) == (6, 6, 4, 1, 1)
    assert res["win_rate"] == pytest.approx(4.5 / 6)
    assert (res["order_disagreements"], res["unparseable"], res["missing"]) == (0, 0, 0)
    scores = [e["score"] for e in res["per_example"]]
    assert scores == [1.0, 1.0, 1.0, 1.0, 0.0, 0.5]
    assert (res["low"], res["high"]) == pytest.approx(stats.bootstrap_ci(scores, 10_000, 0.95, 0))
    assert out["asked"] == 12 and len(script.requests) == 12  # each pair in both orders
    written = lines(evaluated)
    assert Counter(r["order"] for r in written) == {"tuned_first": 6, "other_first": 6}
    first = next(r for r in written if r["id"] == "1.0" and r["order"] == "tuned_first")
    assert (first["a"], first["b"], first["verdict"], first["preferred"]) == ("tuned", "base", "A", "tuned")
    swapped = next(r for r in written if r["id"] == "1.0" and r["order"] == "other_first")
    assert (swapped["a"], swapped["b"], swapped["verdict"], swapped["preferred"]) == ("base", "tuned", "B", "tuned")
    assert script.requests[0]["messages"][0]["content"] == RUBRIC  # the rubric file is what the judge reads


def test_a_judge_that_always_answers_A_wins_nothing_and_disagrees_with_itself_on_every_example(
        script, url, evaluated, rubric_file, capsys):
    """Position bias cancels: "A" both times means tuned once and base once, a half point and an
    order disagreement, never a win."""
    script.mode = "always_a"
    rc, out, _ = polo_judge(capsys, evaluated, url, rubric_file)
    res = out["results"]
    assert rc == 0
    assert (res["wins"], res["losses"], res["ties"], res["order_disagreements"]) == (0, 0, 6, 6)
    assert res["win_rate"] == 0.5


def test_the_terminal_summary_says_the_disagreements_and_unparseable_count(script, url, evaluated, rubric_file,
                                                                           capsys):
    script.mode = "always_a"
    rc = cli.main(["judge", str(evaluated.path), "--endpoint", url, "--model", "judge-1", "--rubric",
                   str(rubric_file)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "win rate of tuned (ties half): 0.50" in out
    assert "order disagreements: 6 of 6 examples" in out
    assert "unparseable replies: 0" in out


# ---------------------------------------------------------------- failures on the way

def test_500s_and_timeouts_are_retried_with_exponential_backoff(script, url, evaluated, rubric_file):
    script.fail_first, script.slow_first, script.slow_s = 2, 1, 1.5  # 500, 500, a reply after the 0.5 s timeout
    waits = []
    asker = fast_asker(url, backoff_s=0.01, timeout_s=0.5, http_retries=4, sleep=waits.append)
    try:
        outcome = judge.judge(judge.load_pairs(evaluated), asker, RUBRIC, concurrency=4)
    finally:
        asker.close()
    assert outcome.failed == [] and outcome.asked == 12
    assert outcome.http_retries == 36  # three retries for each of the 12 requests
    assert Counter(waits) == {0.01: 12, 0.02: 12, 0.04: 12}  # 0.01 s, then twice as long each time
    res = judge.results(judge.load_pairs(evaluated), "judge-1", RUBRIC)
    assert (res.wins, res.losses, res.ties, res.order_disagreements) == (4, 1, 1, 0)


def test_a_request_that_keeps_failing_is_not_recorded_and_the_command_says_so(script, url, evaluated,
                                                                             rubric_file, capsys):
    script.fail_first = 99
    rc, out, err = polo_judge(capsys, evaluated, url, rubric_file, "--settings", str(settings(rubric_file.parent,
                                                                                              http_retries=1)))
    assert rc == 1
    assert len(out["failed"]) == 12 and "HTTP 500" in out["failed"][0] and "after 1 retries" in out["failed"][0]
    assert "12 request(s) failed for good" in err
    assert lines(evaluated) == [] and out["results"]["missing"] == 12


def settings(folder: Path, **values) -> Path:
    """A judge settings file with fast retries (and `values`)."""
    path = folder / "judge.yaml"
    path.write_text(json.dumps({"backoff_s": 0.0, "timeout_s": 5.0, **values}), encoding="utf-8")
    return path


def test_an_unparseable_reply_is_asked_again_and_parses(script, url, evaluated):
    script.garble_first = 1
    asker = fast_asker(url)
    try:
        judge.judge(judge.load_pairs(evaluated), asker, RUBRIC, attempts=3)
    finally:
        asker.close()
    written = lines(evaluated)
    assert {r["tries"] for r in written} == {2} and {r["status"] for r in written} == {"ok"}
    again = [r for r in script.requests if len(r["messages"]) == 4]
    assert len(again) == 12 and again[0]["messages"][3]["content"] == judge.REMINDER
    assert judge.results(judge.load_pairs(evaluated), "judge-1", RUBRIC).unparseable == 0


def test_replies_that_never_parse_are_counted_not_dropped(script, url, evaluated):
    script.mode = "garbled"
    asker = fast_asker(url)
    try:
        judge.judge(judge.load_pairs(evaluated), asker, RUBRIC, attempts=3)
    finally:
        asker.close()
    assert len(script.requests) == 36  # 12 orders x 3 attempts
    written = lines(evaluated)
    assert len(written) == 12 and {r["status"] for r in written} == {"unparseable"}
    assert written[0]["reply"] == "Both are fine.\nI lean to A." and written[0]["tries"] == 3
    res = judge.results(judge.load_pairs(evaluated), "judge-1", RUBRIC)
    assert (res.unparseable, res.unparseable_examples, res.judged, res.missing) == (12, 6, 0, 0)
    assert math.isnan(res.win_rate)


@pytest.mark.parametrize("reply,verdict", [
    ("reasons\nVERDICT: A", "A"), ("VERDICT: TIE\n\n", "TIE"), ("  VERDICT:B  ", "B"),
    ("VERDICT: A\nthanks", None), ("verdict: a", None), ("VERDICT: A or B", None), ("**VERDICT: A**", None),
    ("", None), (None, None),
])
def test_only_a_final_verdict_line_is_a_verdict(reply, verdict):
    assert judge.parse_verdict(reply) == verdict


# ---------------------------------------------------------------- resume

def test_a_rerun_asks_only_what_is_not_judged_yet_under_this_model_and_rubric(script, url, evaluated):
    pairs = judge.load_pairs(evaluated)
    asker = fast_asker(url)
    try:
        judge.judge(pairs, asker, RUBRIC)
        whole = pairs.path.read_text(encoding="utf-8").splitlines()
        # a crash: five verdicts never written, the last one cut in the middle
        pairs.path.write_text("\n".join(whole[:7]) + "\n" + whole[7][:30], encoding="utf-8")
        script.requests.clear()
        outcome = judge.judge(pairs, asker, RUBRIC)
        assert (outcome.asked, outcome.skipped, len(script.requests)) == (5, 7, 5)
        assert judge.results(pairs, "judge-1", RUBRIC).wins == 4
        script.requests.clear()
        assert judge.judge(pairs, asker, RUBRIC).asked == 0 and script.requests == []
        assert judge.judge(pairs, asker, RUBRIC + "\nAlso: be brief.").asked == 12  # an edited rubric: new verdicts
    finally:
        asker.close()
    other_model = judge.Asker(url, "judge-2", backoff_s=0.0)
    try:
        assert judge.judge(pairs, other_model, RUBRIC).asked == 12
    finally:
        other_model.close()


# ---------------------------------------------------------------- people's ratings and other runs

def test_agreement_with_people_comes_before_the_win_rate(script, url, evaluated, rubric_file, capsys):
    folder = evaluated.evaluation().path
    people = [("ana", "1.0", "tuned"), ("ana", "1.1", "tuned"), ("ana", "1.4", "tuned"), ("ana", "1.5", "tie"),
              ("bo", "1.0", "base"), ("bo", "1.2", "tuned"), ("bo", "1.5", "tie"),
              ("bo", "1.3", "tuned")]
    with open(folder / "ratings.jsonl", "w", encoding="utf-8") as f:
        for rater, example, preferred in people:
            rating = {"rater": rater, "example_id": example, "against": "base", "preferred": preferred}
            f.write(json.dumps(rating) + "\n")
        f.write(json.dumps({"rater": "bo", "example_id": "1.3", "against": "other-run", "preferred": "base"}) + "\n")
        f.write('{"rater": "cy", "exa')  # a line cut by a crash
    rc = cli.main(["judge", str(evaluated.path), "--endpoint", url, "--model", "judge-1", "--rubric", str(rubric_file)])
    out = capsys.readouterr().out
    assert rc == 0
    judge_says = ["tuned", "tuned", "base", "tie", "tuned", "tuned", "tie", "tuned"]  # the fair judge, per rating
    said = [p for _, _, p in people]
    from sklearn.metrics import cohen_kappa_score

    kappa = cohen_kappa_score(judge_says, said, labels=["tuned", "base", "tie"])
    assert f"agreement with people: 8 ratings by 2 rater(s) on 6 examples: accuracy {6 / 8:.2f}, " \
           f"Cohen's kappa {kappa:.2f}" in out
    assert out.index("agreement with people") < out.index("win rate of tuned")


def test_against_another_run_needs_the_same_examples(script, url, outputs, rubric_file, capsys):
    first, second, third = bare_run(), bare_run(), bare_run()
    evaluate_with(first, TUNED_TEXT, BASE_TEXT)
    evaluate_with(second, BASE_TEXT, TUNED_TEXT)  # its tuned answers are the first's base answers
    evaluate_with(third, TUNED_TEXT[:5], BASE_TEXT[:5])
    rc, out, _ = polo_judge(capsys, first, url, rubric_file, "--against", second.id)
    assert rc == 0
    assert out["results"]["against"] == second.id and out["results"]["win_rate"] == pytest.approx(4.5 / 6)
    assert {r["against"] for r in lines(first)} == {second.id}
    rc, out, err = polo_judge(capsys, first, url, rubric_file, "--against", third.id)
    assert rc == 2 and "evaluated on different examples (6 vs 5 examples" in err


# ---------------------------------------------------------------- refused before any judging

def test_bad_input_is_refused_before_any_request(script, url, outputs, rubric_file, capsys, monkeypatch):
    evaluated_run = bare_run()
    evaluate_with(evaluated_run, TUNED_TEXT, BASE_TEXT)
    cases = [
        ([str(bare_run().path), "--endpoint", url, "--model", "judge-1"], "has no finished evaluation"),
        ([str(evaluated_run.path), "--endpoint", f"http://127.0.0.1:{free_port()}/v1", "--model", "judge-1"],
         "cannot reach the judge at http://127.0.0.1:"),
        ([str(evaluated_run.path), "--endpoint", url, "--model", "judge-1", "--api-key-env", "POLO_TEST_NO_SUCH_KEY"],
         "$POLO_TEST_NO_SUCH_KEY, which is not set"),
        ([str(evaluated_run.path), "--model", "judge-1"], "the judge needs --endpoint URL and --model NAME"),
        ([str(evaluated_run.path), "--endpoint", "localhost:8000", "--model", "judge-1"], "expected an http(s) URL"),
        ([str(evaluated_run.path), "--endpoint", url, "--model", "judge-1", "--rubric", "no/such/rubric.md"],
         "rubric no/such/rubric.md not found"),
    ]
    monkeypatch.delenv("POLO_TEST_NO_SUCH_KEY", raising=False)
    for args, message in cases:
        rc = cli.main(["judge", *args])
        err = capsys.readouterr().err
        assert rc == 2 and message in err, (args, err)
    script.key = "right"
    monkeypatch.setenv("POLO_TEST_WRONG_KEY", "wrong")
    rc = cli.main(["judge", str(evaluated_run.path), "--endpoint", url, "--model", "judge-1", "--api-key-env",
                   "POLO_TEST_WRONG_KEY"])
    assert rc == 2 and "refused the request (HTTP 401)" in capsys.readouterr().err
    assert script.requests == [] and lines(evaluated_run) == []


def test_the_key_comes_from_the_named_variable_and_is_written_nowhere(script, url, evaluated, rubric_file, capsys,
                                                                      monkeypatch):
    script.key = "sk-test-7f3a9c1e"
    monkeypatch.setenv("POLO_TEST_JUDGE_KEY", script.key)
    rc, out, err = polo_judge(capsys, evaluated, url, rubric_file, "--api-key-env", "POLO_TEST_JUDGE_KEY")
    assert rc == 0 and out["asked"] == 12
    assert script.key not in json.dumps(out) + err
    for path in evaluated.path.rglob("*"):
        assert not path.is_file() or script.key.encode() not in path.read_bytes(), path


def test_the_settings_file_and_its_rubric_load():
    s, rubric = judge.load_settings("default")
    assert rubric == judge.JUDGE_DIR / "rubric.md" and s.api_key_env is None and s.attempts >= 2
    assert "VERDICT: A" in rubric.read_text(encoding="utf-8")
    with pytest.raises(ParamsError, match="concurrency"):
        judge.load_settings("default", concurrency=0)
    assert judge.api_base("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert judge.shown_endpoint("https://user:pw@api.example.com/v1?key=s") == "https://api.example.com/v1"
    assert issubclass(EndpointError, Exception) and issubclass(RunError, Exception)


# ---------------------------------------------------------------- a real `polo serve` as the judge

from adapter_runs import tiny_run, tiny_server  # noqa: E402,F401 - fixtures


@pytest.mark.slow
def test_a_real_polo_serve_judge_whose_replies_do_not_parse_is_counted(tiny_server, tiny_run, tmp_path, capsys,  # noqa: F811
                                                                       monkeypatch):
    """The tiny random model never writes a VERDICT line: every order is asked `attempts` times through
    real HTTP to `polo serve`, then recorded as unparseable; the command finishes and says so."""
    backend, url = tiny_server
    monkeypatch.setenv("POLO_OUTPUTS", str(tiny_run.path.parents[1]))
    evaluate_with(tiny_run, TUNED_TEXT[:2], BASE_TEXT[:2])
    rubric = tmp_path / "rubric.md"
    rubric.write_text("Pick A or B. End with VERDICT: A", encoding="utf-8")
    conf = settings(tmp_path, max_tokens=8, attempts=2, timeout_s=60.0)
    rc = cli.main(["judge", str(tiny_run.path), "--endpoint", url, "--model", backend.model_id, "--rubric", str(rubric),
                   "--settings", str(conf), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["failed"] == []
    res = out["results"]
    assert (res["unparseable"], res["unparseable_examples"], res["judged"], res["missing"]) == (4, 2, 0, 0)
    written = lines(tiny_run)
    assert len(written) == 4 and {(r["status"], r["tries"]) for r in written} == {("unparseable", 2)}
    assert all(isinstance(r["reply"], str) for r in written)
