"""polo_testkit: the test support that users of polo_lib do not need, installed beside it.

polo_lib never imports it by an import statement: local_models names the tiny model's builder as the
string "polo_testkit.tiny_llama:build" and imports it only when a params file (the `smoke` params, the
tests) asks for `tiny-llama` and the model cache does not hold it yet.

  tiny_llama   the tiny random Llama for tests: byte-level BPE tokenizer, chat template, a short pre-training
"""
