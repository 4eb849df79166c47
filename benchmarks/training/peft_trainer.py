"""(c) Plain transformers + PEFT with `transformers.Trainer`, no Unsloth, no polo_lib.

On a GPU the base model is loaded in bitsandbytes 4-bit NF4 (QLoRA, as the recipe asks) with
gradient checkpointing. On a CPU-only torch TRL's SFTTrainer cannot run without Unsloth (its
fused LM head needs Triton), so this path tokenizes and masks by hand: the labels
keep exactly the tokens Unsloth's train_on_responses_only keeps (the answer and its end token).

    python peft_trainer.py SETTINGS.json RESULT.json
"""
import time

started = time.perf_counter()

import probe  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments  # noqa: E402

s = probe.settings()
on_gpu = torch.cuda.is_available()
dtype = probe.precision(s.get("dtype", "auto"))  # bf16 only from compute capability 8.0, as polo_lib
bf16 = dtype == "bfloat16"
tokenizer = AutoTokenizer.from_pretrained(s["model_path"])
if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token
load = {"dtype": torch.float32}
if on_gpu:
    from transformers import BitsAndBytesConfig

    compute = getattr(torch, dtype)
    load = {"dtype": compute, "device_map": {"": 0}}
    if s["load_in_4bit"]:
        load["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
model = AutoModelForCausalLM.from_pretrained(s["model_path"], **load)
checkpointing = bool(s["gradient_checkpointing"])
if on_gpu and s["load_in_4bit"]:
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
elif checkpointing:
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
torch.manual_seed(s["seed"])  # LoRA A initialised from the same seed as Unsloth's random_state
model = get_peft_model(model, LoraConfig(
    r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=s["lora_dropout"],
    target_modules=s["target_modules"], bias="none", task_type="CAUSAL_LM"))


def tokenize(messages):
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert full.startswith(prompt), "the chat template renders the prompt differently inside the chat"
    ids = tokenizer(full, add_special_tokens=False)["input_ids"][: s["max_seq_length"]]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # Labels start where the chat's tokens stop being the prompt's tokens, not at len(prompt_ids):
    # Llama 3's marker ends in "\n\n", one token (271) alone but two "\n" (198, 198) before Hangul,
    # and Unsloth's train_on_responses_only then trains both "\n". Counting the prompt alone put
    # the start one token late in every example (measured: step-1 loss 2.5e-5 apart from (a)).
    start = next((i for i, (a, b) in enumerate(zip(prompt_ids, ids)) if a != b), len(prompt_ids))
    # The answer up to its end-of-turn token; what the template adds after it (ChatML's "\n") is
    # not trained, as in Unsloth's train_on_responses_only, so all paths score the same tokens.
    end = max(i for i, t in enumerate(ids) if t == tokenizer.eos_token_id) + 1
    return {"input_ids": ids, "attention_mask": [1] * len(ids),
            "labels": [-100] * start + ids[start:end] + [-100] * (len(ids) - end)}


dataset = Dataset.from_list([tokenize(m) for m in probe.read_messages(s["train_file"])])
trainer = Trainer(
    model=model, train_dataset=dataset,
    data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
    args=TrainingArguments(
        output_dir=s["output_dir"], max_steps=s["max_steps"],
        per_device_train_batch_size=s["batch_size"], gradient_accumulation_steps=s["accumulation"],
        learning_rate=s["learning_rate"], warmup_steps=s["lr_warmup_steps"], lr_scheduler_type=s["scheduler"],
        weight_decay=s["weight_decay"], max_grad_norm=s["max_grad_norm"],
        optim=s["optim"],
        fp16=dtype == "float16", bf16=bf16, use_cpu=not on_gpu, logging_steps=1,
        save_strategy="no", eval_strategy="no", seed=s["seed"], data_seed=s["seed"],
        include_num_input_tokens_seen="non_padding", report_to="none", remove_unused_columns=False))
probe.measure(trainer, model, s, started)
