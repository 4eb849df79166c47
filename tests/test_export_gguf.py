"""GGUF export: llama.cpp's converter writes f16 and q8_0 files that carry the training chat template
and EOS, load back through transformers, answer like the merged model they came from (parity),
and come with an Ollama Modelfile. Its own file: the slowest export test runs beside the others."""
from __future__ import annotations

import json

import pytest
import torch
from adapter_runs import PARAGRAPH, assert_portable, easy_prompt, last_logits  # noqa: F401

from polo_lib import inference, model, prompts
from polo_lib.deploy import export

pytestmark = pytest.mark.slow


# The q8_0 GGUF (8-bit blocks) against the merged model it came from, same prompts: measured 1.0.
GGUF_Q8_AGREEMENT = 0.5


def test_gguf_export_loads_back_and_matches_the_tuned_model(tiny_smollm2_run, tmp_path):
    """llama.cpp's converter (from the llama-cpp-python sdist, `make export-tools`) writes f16 and
    q8_0 files that carry the training chat template and EOS and load back through transformers."""
    from transformers import AutoModelForCausalLM

    from polo_lib import data

    run = tiny_smollm2_run
    cfg = run.params()  # the processed data parity takes its prompts from
    data.save(data.prepare(cfg.data, model.load_tokenizer(cfg.model), cfg.model.max_seq_length), cfg.data)
    done = export.export(run, "gguf")
    f16, q8 = (export.export_dir(run, "gguf") / f"{run.id}-{t}.gguf" for t in ("f16", "q8_0"))
    assert f16.is_file() and q8.is_file() and q8.stat().st_size < 0.7 * f16.stat().st_size
    assert_portable(done.path, run)  # its base is a temporary folder here: named by its last part only
    tok = inference.run_tokenizer(run)
    # parity with the merged model each file was converted from, read back the same way
    parity = json.loads((done.path / "parity.json").read_text(encoding="utf-8"))
    pairs = {p["export"]: p for p in parity["pairs"]}
    assert parity["prompts"] == 3 and set(pairs) == {f16.name, q8.name}
    assert pairs[f16.name]["expected"] == "identical" and pairs[f16.name]["identical"] == 3, pairs[f16.name]
    assert pairs[q8.name]["expected"] == "tolerance" and pairs[q8.name]["token_agreement"] >= GGUF_Q8_AGREEMENT
    # the Ollama Modelfile: the smallest file, the template as the tokenizer renders it, its stop tokens
    modelfile = (done.path / "Modelfile").read_text(encoding="utf-8")
    assert modelfile.startswith(f"FROM ./{q8.name}\n")
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    system, user = prompts.SYSTEM_PROMPT, "Explain: " + PARAGRAPH
    as_ollama = template.replace("{{ .System }}", system).replace("{{ .Prompt }}", user)  # Ollama's substitution
    assert as_ollama == tok.apply_chat_template([{"role": "system", "content": system},
                                                 {"role": "user", "content": user}],
                                                tokenize=False, add_generation_prompt=True)
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and 'PARAMETER stop "<|im_start|>"' in modelfile
    assert f'SYSTEM """{prompts.SYSTEM_PROMPT}"""' in modelfile
    assert tok.eos_token == "<|im_end|>"
    for path in (f16, q8):
        meta = export.gguf_metadata(path)
        assert meta["architecture"] == "llama" and meta["chat_template"] == tok.chat_template
        assert meta["eos_token_id"] == tok.eos_token_id
        assert done.check[path.name]["generated_tokens"] > 0
    # f16 GGUF read back = the merged 16-bit model it was converted from (bf16 -> f16 loses nothing
    # here), and, like the merge, much closer to the tuned model than to the base it started from.
    # The merge made again as the GGUF export makes it (merge_into; its scratch copy is gone), without
    # the merged export's own parity answers and card, which tests/test_export_serve.py checks
    gguf_model = AutoModelForCausalLM.from_pretrained(str(f16.parent), gguf_file=f16.name, dtype=torch.float32)
    merged_dir, _ = export.merge_into(run, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32)
    tuned, base = inference.load_tuned(run.params(), run), inference.load_base(run.params())
    g, m, t, b = (last_logits(x, tok, easy_prompt(tok)) for x in (gguf_model, merged, tuned.model, base.model))
    assert g.argmax() == m.argmax() and (g - m).abs().max() < 1e-3, (g - m).abs().max()
    assert (g - t).abs().max() < 0.25 * (t - b).abs().max(), ((g - t).abs().max(), (t - b).abs().max())
