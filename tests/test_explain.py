"""polo explain's paper handling, without a model: reading (.txt, .md, .pdf), every bad-input
message, cutting a paper into blocks, and fitting long paragraphs to the model's limit. The
model side (adapter, server, CLI) is in tests/test_export_serve.py beside its fixtures."""
import json

import pytest

from polo_lib import local_models, paths
from polo_lib.deploy import explain
from polo_lib.errors import DataError

PAPER = paths.DATA_DIR / "papers" / "dense_detection_notes.md"


@pytest.mark.parametrize("block,kind", [
    ("# Dense Object Detection", "heading"),
    ("3. Objects of Many Sizes", "heading"),
    ("2.1 Feature pyramids", "heading"),
    ("IV. EXPERIMENTS", "heading"),
    ("Abstract", "heading"),
    ("Figure 1: Positive locations for one object.", "caption"),
    ("Fig. 3. The grid of cells.", "caption"),
    ("Table 2: Results on the test set.", "caption"),
    ("$$ FL(p_t) = - \\alpha_t (1 - p_t)^{\\gamma} \\log(p_t) $$", "equation"),
    ("L = Σ (x - x̂)² + (y - ŷ)²  (3)", "equation"),
    ("[4] An anchor-free detector that predicts box sides.", "reference"),
    ("A detector must say what is in an image and where it is.", "paragraph"),
    ("We keep the discussion close to practice and name each choice a designer faces", "paragraph"),
    ("Single-pass detectors remove the second stage. They place a dense set of predictions.", "paragraph"),
])
def test_each_kind_of_block_is_recognised(block, kind):
    assert explain.classify(block) == kind


def test_the_projects_paper_has_31_paragraphs_and_keeps_the_rest_as_it_is():
    blocks = explain.split_paper(explain.read_paper(PAPER))
    counts = {k: sum(b.kind == k for b in blocks) for k in ("paragraph", "heading", "caption", "equation", "reference")}
    assert counts == {"paragraph": 31, "heading": 13, "caption": 1, "equation": 1, "reference": 4}
    assert blocks[0].text == "Dense Object Detection in One Pass: A Short Study Paper"
    assert [b.kind for b in blocks[-5:]] == ["heading"] + ["reference"] * 4  # everything after References
    # wrapped lines of a paragraph are one paragraph
    assert any(b.text.startswith("A detector must say what is in an image") and b.text.endswith("per image.")
               for b in blocks)


def test_a_text_pdf_is_read_into_the_same_blocks(tmp_path, text_pdf):
    pdf = tmp_path / "short.pdf"
    pdf.write_bytes(text_pdf([
        ["1 Introduction", "", "YOLO looks at the whole image once. It predicts the", "boxes and classes together.",
         "", "Figure 1: The grid of cells."],
        ["Anchor boxes bring shapes that must match the data.", "A poor match leaves objects untrained."]]))
    blocks = explain.split_paper(explain.read_paper(pdf))
    assert [(b.kind, b.text) for b in blocks] == [
        ("heading", "1 Introduction"),
        ("paragraph", "YOLO looks at the whole image once. It predicts the boxes and classes together."),
        ("caption", "Figure 1: The grid of cells."),
        ("paragraph", "Anchor boxes bring shapes that must match the data. A poor match leaves objects untrained.")]


def test_every_bad_paper_is_named_with_the_way_out_before_any_model_loads(tmp_path, text_pdf):
    cases = {
        "missing.md": (None, "no such file"),
        "paper.docx": (b"PK\x03\x04", "'.docx' is not a format polo explain reads; give .txt, .md, .pdf"),
        "latin1.txt": ("Résumé of the paper".encode("latin-1"), "not UTF-8 text"),
        "empty.md": (b"  \n\n ", "the paper is empty"),
        "scanned.pdf": (text_pdf([[], []]), "2 page(s) have no text layer (a scanned paper?). Run OCR"),
        "broken.pdf": (b"%PDF-1.4\nnot really a pdf", "not a readable PDF"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
            explain.read_paper(path)
    only_headings = explain.split_paper("# Title\n\n## Section\n\n[1] A reference.")
    with pytest.raises(DataError, match="no paragraph to explain"):
        explain.check_paragraphs(only_headings, "headings.md")


def test_a_paragraph_over_the_limit_is_cut_at_sentence_ends_and_loses_nothing():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(local_models.resolve("tiny-llama"))
    sentences = [f"Sentence {i} says that grid cell {i} predicts two boxes and a class." for i in range(40)]
    long = explain.Block("paragraph", " ".join(sentences))
    short = explain.Block("paragraph", sentences[0])
    limit, new = 400, 32
    fitted = explain.fit([short, explain.Block("heading", "Intro"), long], tokenizer, limit, new)
    assert fitted[0] == short and fitted[1].kind == "heading"
    pieces = fitted[2:]
    assert len(pieces) > 1 and [p.part for p in pieces] == list(range(1, len(pieces) + 1))
    assert " ".join(p.text for p in pieces) == long.text  # nothing lost, nothing repeated
    for p in pieces:
        assert p.text.endswith("class.")  # cut at sentence ends
        prompt = explain.inference.prompt_text(tokenizer, explain.prompts.build_messages(p.text))
        assert len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + new <= limit


def test_glossary_terms_are_marked_in_both_columns_and_say_their_korean_on_hover():
    """The original's English terms, and the explanation's Korean renderings and the English terms it
    keeps; each mark's title is the glossary's Korean term (the English one for a name kept in English)."""
    from polo_lib import metrics

    glossary = metrics.load_glossary()
    block = explain.Block("paragraph", "A convolutional network predicts bounding boxes from feature maps, as R-CNN.",
                          korean="CNN은 특징 맵에서 바운딩 박스를 예측합니다. ImageNet으로 미리 학습합니다.")
    page = explain.to_html(explain.Explained("p.md", "run", "adapter", [block], 1.0, 10), glossary)
    original, korean = page.split("<div class='original'>")[1].split("<div class='korean'>")
    cnn = 'title="합성곱 신경망 (convolutional neural network)"'
    assert f"<mark {cnn}>convolutional network</mark>" in original
    assert '<mark title="바운딩 박스 (bounding box)">bounding boxes</mark>' in original
    assert "from feature maps," in original  # no mAP in a map
    assert '<mark title="R-CNN">R-CNN</mark>' in original
    assert f"<mark {cnn}>CNN</mark>은" in korean
    assert '<mark title="바운딩 박스 (bounding box)">바운딩 박스</mark>' in korean
    assert '<mark title="이미지넷 (ImageNet)">ImageNet</mark>' in korean
    assert '<mark title="사전 학습 (pretraining)">미리 학습</mark>' in korean
    md = explain.markdown(explain.Explained("p.md", "run", "adapter", [block], 1.0, 10), glossary)
    assert "**CNN**은" in md and "A **convolutional network**" in md


def test_an_explanation_cut_at_max_new_tokens_says_so_on_the_page():
    """The page's facts count the explanations that reached max_new_tokens and name the setting
    that gives them room; each one ends with the cut note, in Markdown and HTML; the others do not."""
    blocks = [explain.Block("paragraph", "YOLO looks once.", korean="YOLO는 한 번 봅니다."),
              explain.Block("paragraph", "Each cell predicts boxes.", korean="각 칸은 상자를 예측하", cut=True)]
    result = explain.Explained("p.md", "run", "adapter", blocks, 1.0, 40, max_new_tokens=24)
    note = "[cut off at the limit of 24 new tokens]"
    md = explain.markdown(result, [])  # no glossary: no term marks in the way
    assert "1 of them reached the limit of 24 new tokens" in md and "--max-new-tokens" in md
    first, second = md.split("**Original**")[1:]
    assert note not in first and f"각 칸은 상자를 예측하\n\n*{note}*" in second
    page = explain.to_html(result, [])
    first, second = page.split("<div class='pair'>")[1:]
    assert "class='cut'" not in first and f"예측하<span class='cut'>{note}</span></div>" in second
    assert "1 of them reached the limit of 24 new tokens" in page.split("</p>")[0]
    whole = explain.Explained("p.md", "run", "adapter", blocks[:1], 1.0, 8, max_new_tokens=24)
    assert "reached the limit" not in explain.markdown(whole, []) + explain.to_html(whole, [])


def test_explanations_that_loop_are_counted_on_the_page_and_in_the_json(tmp_path):
    """The CPU demo's failure on unseen papers, one phrase repeated to the limit: each paragraph's longest repeat
    and distinct-2 (the evaluation's own measures) in the .json, the loops counted on the page."""
    from polo_lib import runs

    looping = "이를 위한 " * 12
    blocks = [explain.Block("paragraph", "YOLO looks once.", korean="YOLO는 이미지를 한 번만 봅니다."),
              explain.Block("heading", "2 Method"),
              explain.Block("paragraph", "Each cell predicts boxes.", korean=looping.strip())]
    result = explain.Explained("p.md", "run", "adapter", blocks, 1.0, 40, max_new_tokens=24)
    loops = result.loops()
    assert (loops["paragraphs"], loops["looping"]) == (2, 1)
    assert loops["longest_repeat"][0] <= 6 < loops["longest_repeat"][1]
    assert loops["distinct_2"][0] == 1.0 and loops["distinct_2"][1] < 0.2
    assert "1 of 2 explanations repeat a phrase of more than 6 tokens" in explain.markdown(result, [])
    assert "1 of 2 explanations repeat" in explain.to_html(result, [])
    run = runs.Run("run", tmp_path / "run")
    written = json.loads(explain.write(result, run, "p.md")["json"].read_text(encoding="utf-8"))
    assert written["loops"] == json.loads(json.dumps(loops))
    fine = explain.Explained("p.md", "run", "adapter", blocks[:1], 1.0, 8, max_new_tokens=24)
    assert "repeat a phrase" not in explain.markdown(fine, [])
