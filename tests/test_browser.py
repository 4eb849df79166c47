"""The chat app, an explained paper and the rating page in a real browser: headless Chromium (Debian's
chromium and chromium-driver, which .ci/run installs) driven by Selenium, on a smoke run trained here
(the rating page needs only an evaluation's answers: its run is made without training). The
chat app streams: a script in the page records every value a box shows while an answer is
written, so the test sees the text grow, not only where it ends.

Screenshots go into each test's temporary folder (kept by pytest for the last runs)."""
import re
import shutil
import socket

import pytest

from polo_lib import params, pipeline, runs

CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="no chromium + chromedriver here: `apt-get install chromium chromium-driver` "
                                      "(.ci/run installs them)")]

# Long enough for the tiny model to answer in Hangul (it learns the training paragraphs' answers).
LEARNS = {"max_steps": 30, "eval_steps": 15, "save_steps": 15}
HANGUL = re.compile("[가-힣]")
PARAGRAPH = "YOLO divides the input image into an S x S grid; each grid cell predicts B bounding boxes."


@pytest.fixture(scope="module")
def smoke_run(tiny_model_dir, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("browser")
    mp.setenv("POLO_OUTPUTS", str(folder / "outputs"))
    mp.setenv("POLO_PROCESSED_DIR", str(folder / "processed"))
    try:
        cfg = params.load("smoke", overrides=LEARNS)
        pipeline.prepare_stage(cfg)
        run = runs.open_run(cfg, stage="train")
        pipeline.train_stage(cfg, run, live=False)
        runs.finish_stage(run, "train")
        yield run
    finally:
        mp.undo()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Every 5 ms, the value of `element` (a textbox), or the text of the last element matching `css`
# (a chat bubble), appended to window.__seen[name] when it changed.
RECORD = """
const [name, element, css] = arguments;
window.__seen = window.__seen || {};
const seen = window.__seen[name] = [];
setInterval(() => {
  let value = "";
  if (element) { value = element.value; }
  else { const all = document.querySelectorAll(css); value = all.length ? all[all.length - 1].innerText : ""; }
  if (seen[seen.length - 1] !== value) seen.push(value);
}, 5);
"""


def grew(values: list[str]) -> list[str]:
    """The distinct non-empty values a box showed, in order; asserts they were several, each
    the start of the next (text appended as it is generated, nothing rewritten)."""
    shown = [v for v in values if v.strip()]
    assert len(shown) >= 3, f"the text did not grow in steps, it appeared at once: {shown}"
    assert all(later.startswith(earlier) for earlier, later in zip(shown, shown[1:])), shown
    return shown


def test_the_chat_app_explains_a_paragraph_in_korean_and_shows_base_and_tuned_in_a_browser(smoke_run, browser,
                                                                                          tmp_path):
    """Each tab streams: the explanation, both answers of "Base vs tuned" and the chat's answer
    grow in the page before they are done."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from polo_lib.deploy import chat_app

    port = free_port()
    app = chat_app.launch(str(smoke_run.path), port=port, block=False)  # what `polo chat RUN` runs
    wait = WebDriverWait(browser, 120)

    def tab(name: str) -> None:
        wait.until(lambda d: [t for t in d.find_elements(By.CSS_SELECTOR, "button[role='tab']")
                              if t.text == name])[0].click()

    def box(label: str):
        return wait.until(lambda d: d.find_element(
            By.XPATH, f"//label[.//span[contains(normalize-space(.), '{label}')]]//textarea"))

    def button(text: str):
        return wait.until(lambda d: [b for b in d.find_elements(By.TAG_NAME, "button") if b.text == text])[0]

    try:
        def finished() -> bool:  # Gradio's progress tracker is hidden again once the handler is done
            return not browser.find_elements(By.CSS_SELECTOR, "[data-testid='status-tracker']:not(.hide)")

        browser.get(f"http://127.0.0.1:{port}/")
        tab("Explain this paragraph")
        box("paragraph (e.g.").send_keys(PARAGRAPH)
        explanation = box("explanation")
        browser.execute_script(RECORD, "explanation", explanation, None)
        button("Explain in easy Korean").click()
        wait.until(lambda d: explanation.get_attribute("value") and finished())
        final = explanation.get_attribute("value")
        assert HANGUL.search(final), final
        assert grew(browser.execute_script("return window.__seen.explanation"))[-1] == final
        browser.save_screenshot(str(tmp_path / "explain-tab.png"))

        tab("Base vs tuned")
        box("prompt").send_keys("YOLO")  # the untrained base answers the paragraph with "." alone, this at length
        base, tuned = box("base model"), box("tuned model")
        browser.execute_script(RECORD, "base", base, None)
        browser.execute_script(RECORD, "tuned", tuned, None)
        button("Generate both").click()
        wait.until(lambda d: base.get_attribute("value") and tuned.get_attribute("value") and finished())
        assert base.get_attribute("value") != tuned.get_attribute("value")
        assert grew(browser.execute_script("return window.__seen.base"))[-1] == base.get_attribute("value")
        assert grew(browser.execute_script("return window.__seen.tuned"))[-1] == tuned.get_attribute("value")
        browser.save_screenshot(str(tmp_path / "base-vs-tuned-tab.png"))

        tab("Chat")
        browser.execute_script(RECORD, "chat", None, "[data-testid='bot']")
        message = wait.until(lambda d: [t for t in d.find_elements(By.CSS_SELECTOR, "textarea")
                                        if t.get_attribute("data-testid") == "textbox" and t.is_displayed()])[0]
        message.send_keys(PARAGRAPH + Keys.ENTER)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='bot']") and finished())
        answers = [v for v in browser.execute_script("return window.__seen.chat") if v.strip()]
        assert len(set(answers)) >= 3 and len(answers[0]) < len(answers[-1]), answers  # it grew while written
        browser.save_screenshot(str(tmp_path / "chat-tab.png"))
    finally:
        app.close()
    print(f"screenshots: {tmp_path}")  # for the note (pytest -s)
    assert (tmp_path / "explain-tab.png").stat().st_size > 10_000


def test_an_explained_paper_opens_side_by_side_in_a_browser(smoke_run, browser, tmp_path):
    from selenium.webdriver.common.by import By

    from polo_lib.deploy import explain

    result, written = explain.explain_paper(smoke_run, explain.resolve_paper(None), max_new_tokens=24)
    browser.get(written["html"].as_uri())
    pairs = browser.find_elements(By.CSS_SELECTOR, "div.pair")
    assert len(pairs) == result.counts["paragraph"] == 31
    for pair in pairs[:5]:  # the original on the left, its easy Korean beside it on the same row
        original = pair.find_element(By.CSS_SELECTOR, ".original").rect
        korean = pair.find_element(By.CSS_SELECTOR, ".korean").rect
        assert abs(original["y"] - korean["y"]) < 2 and original["x"] + original["width"] <= korean["x"]
        assert korean["width"] > 300
    assert any(HANGUL.search(p.find_element(By.CSS_SELECTOR, ".korean").text) for p in pairs)
    assert browser.find_elements(By.CSS_SELECTOR, "mark[title]")  # glossary terms marked
    assert "Abstract" in [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    browser.save_screenshot(str(tmp_path / "explained.png"))
    assert (tmp_path / "explained.png").stat().st_size > 10_000


@pytest.fixture
def evaluated_run(tiny_model_dir, tmp_path, monkeypatch):
    """A finished run with a finished evaluation of four YOLO paragraphs, its predictions.jsonl
    written here: the rating page reads that file alone and loads no model, so nothing is trained
    or generated (the evaluation's bookkeeping is the real one: runs.start_evaluation, finish_stage)."""
    import json

    from adapter_runs import make_adapter_run

    from polo_lib import paths

    outputs = tmp_path / "outputs"
    run = make_adapter_run(outputs, "smoke", noise_std=0.05)
    monkeypatch.setenv("POLO_OUTPUTS", str(outputs))
    cfg = params.load("smoke")
    runs.open_run(cfg, run.id, stage="evaluate", may_differ=("evaluation",))
    evaluation = runs.start_evaluation(run, cfg)
    records = json.loads((paths.PROJ_ROOT / "data/raw/yolo_v1.json").read_text(encoding="utf-8"))[:4]
    rows = [{"id": r["id"], "original": r["original"], "reference": r["simplified"], "tuned": r["simplified"],
             "base": r["simplified"].split(". ")[0] + "."} for r in records]
    (evaluation.path / "predictions.jsonl").write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    runs.finish_stage(run, "evaluate")
    return run


def test_the_rating_page_keeps_every_rating_and_reopens_at_the_first_unrated_example(evaluated_run, browser,
                                                                                      tmp_path):
    """Blind ratings in a browser: three pairs rated (A better with a note, B better with a corrected
    answer, tie), the page reloaded: it shows the fourth example; ratings.jsonl holds the three, each
    with the order the rater saw and never was told."""
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from polo_lib import ratings
    from polo_lib.deploy import rate_app

    task = ratings.load_task(evaluated_run)
    port = free_port()
    app = rate_app.launch(task, "ann", port=port, block=False)  # what `polo rate RUN --rater ann` runs
    wait = WebDriverWait(browser, 60)

    def box(label: str):
        return wait.until(lambda d: d.find_element(
            By.XPATH, f"//label[.//span[contains(normalize-space(.), '{label}')]]//textarea"))

    def button(text: str):
        return wait.until(lambda d: [b for b in d.find_elements(By.TAG_NAME, "button") if b.text == text])[0]

    def showing(k: int) -> None:
        """Wait until the page shows example k (1-based) and check it: its paragraph, its two
        answers in this rater's hidden order, empty note and correction."""
        pair = task.pairs[k - 1]
        wait.until(lambda d: f"Example {k} of 4" in d.find_element(By.TAG_NAME, "body").text
                   and box("source paragraph").get_attribute("value") == pair.original)
        a, b = ratings.order("ann", "base", pair.id)
        assert (box("answer A").get_attribute("value"), box("answer B").get_attribute("value")) == \
            (pair.answers[a], pair.answers[b])
        assert box("note").get_attribute("value") == box("corrected answer").get_attribute("value") == ""

    try:
        browser.get(f"http://127.0.0.1:{port}/")
        showing(1)
        box("note").send_keys("A keeps every fact")
        button("A better").click()
        showing(2)
        box("corrected answer").send_keys("고친 답입니다.")
        button("B better").click()
        showing(3)
        button("tie").click()
        showing(4)
        browser.refresh()  # closing and reopening the page: the rater goes on where they stopped
        showing(4)
        browser.save_screenshot(str(tmp_path / "rate-page.png"))
    finally:
        app.close()
    lines = task.path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    saved = [json.loads(line) for line in lines]
    for rating, pair, choice in zip(saved, task.pairs, ["A", "B", "tie"]):
        a, b = ratings.order("ann", "base", pair.id)
        assert (rating["example_id"], rating["rater"], rating["a"], rating["b"], rating["choice"]) == \
            (pair.id, "ann", a, b, choice)
        assert rating["preferred"] == {"A": a, "B": b, "tie": "tie"}[choice]
    assert (saved[0]["note"], saved[1]["correction"]) == ("A keeps every fact", "고친 답입니다.")
    print(f"screenshot: {tmp_path / 'rate-page.png'}")  # for the note (pytest -s)
    assert (tmp_path / "rate-page.png").stat().st_size > 10_000
