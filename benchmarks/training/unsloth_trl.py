"""(b) A bare Unsloth + TRL script: what a user writes from Unsloth's notebooks, no polo_lib.

    python unsloth_trl.py SETTINGS.json RESULT.json
"""
import time

started = time.perf_counter()

import probe  # noqa: E402
import torch  # noqa: E402
import unsloth  # noqa: E402,F401  (before transformers/trl/peft: it patches them)
from datasets import Dataset  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402
from unsloth import FastLanguageModel  # noqa: E402
from unsloth.chat_templates import train_on_responses_only  # noqa: E402

s = probe.settings()
on_gpu = torch.cuda.is_available()
# Not dtype=None: Unsloth would pick bf16 from torch.cuda.is_bf16_supported(), which counts
# emulation (True on a T4). The same rule as polo_lib: bf16 only from compute capability 8.0.
dtype = probe.precision(s.get("dtype", "auto"))
model, tokenizer = FastLanguageModel.from_pretrained(
    model_name=s["model_path"], max_seq_length=s["max_seq_length"],
    dtype=getattr(torch, dtype), load_in_4bit=s["load_in_4bit"] and on_gpu)
model = FastLanguageModel.get_peft_model(
    model, r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=s["lora_dropout"],
    target_modules=s["target_modules"], bias="none",
    use_gradient_checkpointing=s["gradient_checkpointing"], random_state=s["seed"],
    max_seq_length=s["max_seq_length"])
dataset = Dataset.from_list([{"messages": m} for m in probe.read_messages(s["train_file"])])
trainer = SFTTrainer(
    model=model, processing_class=tokenizer, train_dataset=dataset,
    args=SFTConfig(
        output_dir=s["output_dir"], max_steps=s["max_steps"],
        per_device_train_batch_size=s["batch_size"], gradient_accumulation_steps=s["accumulation"],
        learning_rate=s["learning_rate"], warmup_steps=s["lr_warmup_steps"], lr_scheduler_type=s["scheduler"],
        weight_decay=s["weight_decay"], max_grad_norm=s["max_grad_norm"], optim=s["optim"],
        fp16=dtype == "float16", bf16=dtype == "bfloat16",
        use_cpu=not on_gpu, logging_steps=1, save_strategy="no", eval_strategy="no",
        seed=s["seed"], data_seed=s["seed"], max_length=s["max_seq_length"], packing=False,
        include_num_input_tokens_seen="non_padding", report_to="none"))
trainer = train_on_responses_only(trainer, instruction_part=s["instruction_part"],
                                  response_part=s["response_part"])
probe.measure(trainer, model, s, started)
