"""Token ids to text: what an answer reads as when a byte-level tokenizer's tokens end or break
inside a character (inference.text_of, whole_text and the streaming writer that use it).

The rule: bytes that form no character decode to nothing (never U+FFFD), wherever they are; a
U+FFFD the model wrote as a whole character stays where the tokens can be read as bytes; the text
of a growing list of ids only grows (streaming hands out its deltas).
"""
from __future__ import annotations

import random

import pytest
import torch

from polo_lib import inference, local_models
from polo_lib.inference import decoding

ANSWER = "YOLO는 사진을 7x7 격자로 나누고, 칸마다 물체의 상자와 확률을 한 번에 예측해요."
BROKEN = inference.BROKEN


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "tiny-llama"])
def tok(request):
    """SmolLM2's byte-level BPE (the CPU demo's) and the tiny test model's (its decoder is a plain
    ByteLevel one, SmolLM2's converted from GGUF is a Sequence around one)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(local_models.resolve(request.param))


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_every_cut_of_a_korean_answer_is_a_start_of_it_without_a_broken_character(tok):
    """max_new_tokens may fall after any token: each cut reads as the answer's whole characters up
    to there, and no more than the loose bytes of the last syllable are lost."""
    ids = ids_of(tok, ANSWER)
    raw_broken = [k for k in range(1, len(ids)) if BROKEN in tok.decode(ids[:k])]
    assert len(raw_broken) > 1, "no cut falls inside a syllable: this answer tests nothing"
    for k in range(len(ids) + 1):
        text = inference.text_of(tok, ids[:k])
        assert BROKEN not in text and ANSWER.startswith(text), (k, text)
        assert len(text) >= len(tok.decode(ids[:k]).rstrip(BROKEN)) - 1, (k, text)  # only loose bytes go
    assert inference.whole_text(tok, ids) == ANSWER


def test_bytes_that_form_no_character_in_the_middle_decode_to_nothing(tok):
    """The CPU model wrote the first bytes of 때 and went on with "marked": the tokenizer decodes that
    as "때\ufffdmarked"; the answer reads without the mark, and every cut of it is a start of it."""
    ttae = ids_of(tok, "때")
    assert len(ttae) > 1, "때 is one token here: nothing to break"
    ids = ids_of(tok, "사진을 때") + ttae[:-1] + ids_of(tok, "marked 격자로")
    assert BROKEN in tok.decode(ids)[:-3], tok.decode(ids)  # in the middle
    whole = inference.text_of(tok, ids)
    assert whole == "사진을 때marked 격자로"
    for k in range(len(ids) + 1):
        assert whole.startswith(inference.text_of(tok, ids[:k])), k


def test_a_u_fffd_the_model_wrote_as_a_character_stays(tok):
    """U+FFFD is a character too (bytes EF BF BD): written whole, it is text and is kept, in the
    middle and at the end; only bytes that form no character go."""
    text = "때\ufffdmarked \ufffd"
    ids = ids_of(tok, text)
    assert inference.text_of(tok, ids) == text
    assert inference.text_of(tok, ids[:-1]) in ("때\ufffdmarked ", "때\ufffdmarked")  # its bytes cut: gone
    assert inference.text_of(tok, ids_of(tok, "때")[:1] + ids) == text  # a loose byte before it: gone


def test_any_ids_read_as_the_tokenizers_own_decoding_without_its_marks(tok):
    """Whatever the model writes (seeded random tokens, many of them single bytes): the text is the
    tokenizer's own decoding with the U+FFFD of its invalid bytes removed, and every cut of it is a
    start of it."""
    rng = random.Random(0)
    pieces = [ids_of(tok, c) for c in "때사진격자확률요는을"]
    byte_tokens = sorted({i for p in pieces for i in p})  # the tokens Hangul is spelled with
    words = ids_of(tok, " grid cell 7x7 YOLO")
    for _ in range(30):
        ids = [rng.choice(byte_tokens + words) for _ in range(rng.randint(1, 40))]
        whole = inference.text_of(tok, ids)
        assert whole == tok.decode(ids, skip_special_tokens=True).replace(BROKEN, ""), ids
        for k in range(len(ids)):
            assert whole.startswith(inference.text_of(tok, ids[:k])), (ids, k)


def test_a_streamed_answer_with_broken_bytes_in_the_middle_never_shows_a_mark(tok):
    """Through the streamer generate uses: the pieces hold no U+FFFD and add up to the final text,
    which has none either."""
    ids = ids_of(tok, "사진을 때") + ids_of(tok, "때")[:-1] + ids_of(tok, "marked 격자로 나누고")
    answers, pieces = [decoding._Answer()], []
    writer = decoding._Writer(tok, answers, [0], (), lambda i, piece: pieces.append(piece), None, None, 1)
    for token in ids:
        writer.put(torch.tensor([token]))
    writer.finish_rest(1.0)
    assert not any(BROKEN in p for p in pieces), pieces
    assert "".join(pieces) == answers[0].result.text == "사진을 때marked 격자로 나누고"
    assert answers[0].result.cut  # it ran to the end of its tokens without EOS


def test_a_tokenizer_whose_tokens_are_not_bytes_drops_every_mark():
    """A SentencePiece-style tokenizer (byte fallback, '▁' for spaces), built here: its tokens do not
    read as bytes, so a written U+FFFD cannot be told from broken bytes after decoding, and every
    U+FFFD goes; cuts still only grow."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}, "▁marked": 257, "▁grid": 258}
    backend = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    sp = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    ttae, mark = [1 + b for b in "때".encode()], [1 + b for b in "\ufffd".encode()]  # in byte tokens
    ids = ttae + [258] + mark + [257]
    assert sp.decode(ids) == "때 grid\ufffd marked"
    cut = ttae[:2] + ids[3:]  # 때's last byte left out
    assert sp.decode(cut) == "\ufffd\ufffd grid\ufffd marked"
    assert inference.text_of(sp, cut) == " grid marked"
    assert inference.text_of(sp, ids) == "때 grid marked"  # the written one goes too here
    for k in range(len(cut)):
        assert inference.text_of(sp, cut).startswith(inference.text_of(sp, cut[:k])), k
