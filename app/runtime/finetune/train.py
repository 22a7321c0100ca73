"""The training run itself: peft LoRA (or QLoRA) with TRL's SFTTrainer, reporting through events.

It runs inside the ``finetune`` child job (`app.runtime.finetune.child`), never in the worker: a
crash or an out-of-memory kill ends only the child, and cancel is a kill. Everything the parent needs to
know goes through ``emit(dict)``: the plan of the run, one event per logged step (loss, learning
rate, tokens/s, time left), validation losses, sample answers and finished checkpoints.

Checkpoints carry the optimizer and scheduler state, so ``resume_from_checkpoint`` continues at
the checkpoint's step with the same schedule.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.runtime.finetune import collate, data
from app.runtime.finetune.config import COMPLETE, RunConfig, checkpoints_dir, last_checkpoint

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]
ADAPTER = "adapter"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_examples(cfg: RunConfig) -> tuple[list[data.Example], list[data.Example], data.DataReport]:
    report = data.read(cfg.data, on_error=cfg.on_error)
    if cfg.eval_data:
        validation = data.read(cfg.eval_data, on_error=cfg.on_error).examples
        return report.examples, validation, report
    train, validation = data.split(report.examples, validation_fraction=cfg.validation_fraction, seed=cfg.seed)
    return train, validation, report


def _prompt_of(example: data.Example) -> list[dict[str, str]]:
    """The conversation up to its last assistant turn: what the sample answer replies to."""
    messages = list(example.messages)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def run(cfg: RunConfig, emit: Emit, *, resume: bool = False) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(cfg.base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_ex, val_ex, report = load_examples(cfg)
    train_enc = collate.encode_all(tokenizer, train_ex, max_length=cfg.seq_length, prompt_loss=cfg.prompt_loss)
    val_enc = collate.encode_all(tokenizer, val_ex, max_length=cfg.seq_length, prompt_loss=cfg.prompt_loss)
    if not train_enc:
        raise ValueError("no training example has any answer tokens left within the sequence length")
    to_rows = lambda items: [{"input_ids": e.input_ids, "labels": e.labels} for e in items]  # noqa: E731

    model_kwargs: dict[str, Any] = {"dtype": torch.float32 if cfg.device == "cpu" else torch.bfloat16}
    if cfg.quantize_4bit:
        model_kwargs.update(_qlora_kwargs(torch))
    model = AutoModelForCausalLM.from_pretrained(cfg.base, **model_kwargs)
    if cfg.quantize_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.grad_checkpointing)

    total = planned_steps(-(-len(train_enc) // cfg.batch_size), grad_accum=cfg.grad_accum, epochs=cfg.epochs, max_steps=cfg.max_steps)
    save_steps = cfg.save_steps or max(1, total // 5)
    eval_steps = cfg.eval_steps or max(1, total // 10)
    sample_steps = cfg.sample_steps or eval_steps
    sample_prompt = [{"role": "user", "content": cfg.sample_prompt}] if cfg.sample_prompt else (_prompt_of(val_ex[0]) if val_ex and val_ex[0].messages else None)

    args = SFTConfig(
        output_dir=str(checkpoints_dir(cfg.run_dir)),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup,
        weight_decay=0.0,
        max_length=cfg.seq_length,
        packing=cfg.packing,
        gradient_checkpointing=cfg.grad_checkpointing,
        use_cpu=cfg.device == "cpu",
        bf16=cfg.device == "cuda",
        optim="paged_adamw_8bit" if cfg.quantize_4bit else "adamw_torch",
        logging_steps=1,
        eval_strategy="steps" if val_enc else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        report_to="none",
        disable_tqdm=True,
        seed=cfg.seed,
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )
    events = _Events(emit, tokenizer=tokenizer, total=total, sample_prompt=sample_prompt, sample_steps=sample_steps, started=started)
    callback = type("HearthEvents", (TrainerCallback,), {k: getattr(events, k) for k in ("on_train_begin", "on_log", "on_save", "on_step_end")})()
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(to_rows(train_enc)),
        eval_dataset=Dataset.from_list(to_rows(val_enc)) if val_enc else None,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=TARGETS, task_type="CAUSAL_LM"),
        callbacks=[callback],
    )
    # After packing the batches are the trainer's own: count the steps from its dataloader, as it does.
    total = events.total = planned_steps(len(trainer.get_train_dataloader()), grad_accum=cfg.grad_accum, epochs=cfg.epochs, max_steps=cfg.max_steps)
    checkpoint = last_checkpoint(cfg.run_dir) if resume else None
    emit({"kind": "start", "total_steps": total, "train_examples": len(train_enc), "validation_examples": len(val_enc),
          "skipped_rows": len(report.issues), "resumed_from": int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else None,
          "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)})
    first_eval = trainer.evaluate()["eval_loss"] if val_enc and checkpoint is None else None
    if first_eval is not None:
        emit({"kind": "eval", "step": 0, "eval_loss": first_eval})
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    final_eval = None
    if val_enc:  # the trainer may just have evaluated at the last step: no need to do it twice
        last = events.evals[-1] if events.evals else None
        final_eval = last["eval_loss"] if last and last["step"] == trainer.state.global_step else trainer.evaluate()["eval_loss"]
    adapter = _save_adapter(trainer.model, tokenizer, cfg.run_dir)
    peak = _peak_memory(torch, cfg.device)
    result = {
        "kind": "done",
        "adapter": str(adapter),
        "steps": trainer.state.global_step,
        "train_loss": output.training_loss,
        "eval_loss_first": first_eval,
        "eval_loss": final_eval,
        "eval_history": events.evals,
        "peak_memory": peak,
        "memory_estimate": cfg.extra.get("memory_estimate"),
        "seconds": time.monotonic() - started,
    }
    emit(result)
    return result


def _qlora_kwargs(torch: Any) -> dict[str, Any]:
    """4-bit NF4 base for QLoRA. bitsandbytes is an optional extra (installed with a GPU only)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("4-bit QLoRA needs the bitsandbytes package: install Hearth's 'cuda' extra (pip install 'hearth[cuda]')") from exc
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    return {"quantization_config": config, "device_map": {"": 0}}


def _save_adapter(model: Any, tokenizer: Any, run_dir: Path) -> Path:
    """The adapter written to a temporary folder and renamed into place: never half there."""
    final = run_dir / ADAPTER
    staging = run_dir / f".{ADAPTER}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


def _peak_memory(torch: Any, device: str) -> dict[str, Any]:
    if device == "cuda":
        return {"device": "cuda", "bytes": int(torch.cuda.max_memory_allocated())}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"device": "cpu", "bytes": int(rss if sys.platform == "darwin" else rss * 1024)}


def planned_steps(batches_per_epoch: int, *, grad_accum: int, epochs: float, max_steps: int) -> int:
    """Optimizer steps of a run, counted as the trainer counts them: each epoch rounds its last
    partial accumulation up to a whole step (a run of 21 batches, accumulating 2, for 4 epochs is
    44 steps, not 42), and the epochs may be fractional."""
    if max_steps > 0:
        return max_steps
    per_epoch = max(batches_per_epoch // grad_accum + int(batches_per_epoch % grad_accum > 0), 1)
    return max(1, math.ceil(epochs * per_epoch))


class _Events:
    """The trainer's callbacks turned into Hearth's events (a TrainerCallback's hooks, bound here)."""

    def __init__(self, emit: Emit, *, tokenizer: Any, total: int, sample_prompt: list[dict[str, str]] | None, sample_steps: int, started: float) -> None:
        self.emit, self.tokenizer, self.total = emit, tokenizer, total
        self.sample_prompt, self.sample_steps = sample_prompt, sample_steps
        self.evals: list[dict[str, float]] = []
        self._t0 = time.monotonic()
        self._step0 = 0
        self._tokens = (time.monotonic(), 0.0)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._t0, self._step0 = time.monotonic(), state.global_step
        if state.max_steps and state.max_steps > 0:
            self.total = int(state.max_steps)  # the trainer's own count is the one it will stop at

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        logs = dict(logs or {})
        step = state.global_step
        if "eval_loss" in logs:
            self.evals.append({"step": step, "eval_loss": float(logs["eval_loss"])})
            self.emit({"kind": "eval", "step": step, "eval_loss": float(logs["eval_loss"])})
            return
        if "loss" not in logs:
            return
        now = time.monotonic()
        tokens = float(logs.get("num_tokens", 0.0))
        then, before = self._tokens
        self._tokens = (now, tokens)
        done = max(step - self._step0, 1)
        eta = (now - self._t0) / done * max(self.total - step, 0)
        self.emit({
            "kind": "step", "step": step, "total_steps": self.total, "epoch": logs.get("epoch"),
            "loss": float(logs["loss"]), "learning_rate": float(logs.get("learning_rate", 0.0)),
            "tokens_per_s": (tokens - before) / (now - then) if now > then and tokens > before else None,
            "eta_s": eta,
        })

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            (folder / COMPLETE).write_text(str(state.global_step), encoding="utf-8")
            self.emit({"kind": "checkpoint", "step": state.global_step, "path": str(folder)})

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.sample_prompt and model is not None and state.global_step % self.sample_steps == 0:
            self.emit({"kind": "sample", "step": state.global_step, "prompt": self.sample_prompt[-1]["content"], "text": sample(model, self.tokenizer, self.sample_prompt)})


def sample(model: Any, tokenizer: Any, messages: list[dict[str, str]], *, max_new_tokens: int = 32) -> str:
    """A short greedy answer, to see what the model has learned so far."""
    import torch

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.1, pad_token_id=tokenizer.pad_token_id)
    finally:
        if was_training:
            model.train()
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
