"""Fine-tuning settings chosen from the machine, each with its reason, and the memory they need.

Pure functions: ``(TrainModel, Hardware, DataStats, overrides) -> TrainingPlan``. The starting
points are the published recipes — QLoRA (Dettmers et al. 2023: 4-bit NF4 base, LoRA on every
linear layer, lr 2e-4, effective batch 16, paged 8-bit AdamW) and Unsloth's defaults (r = 16,
alpha = 16–32, lr 2e-4, batch 2 × accumulation 4, 1–3 epochs) — adjusted for what the machine has
and how much data there is. A person's override always wins and is marked as theirs.

The memory estimate adds up what training holds at its peak: the base weights (fp32 on a CPU, bf16 on
a GPU, 4-bit NF4 with QLoRA), the adapters and their gradients (fp32), AdamW's two moments, the
activations kept for the backward pass (per layer, less with gradient checkpointing) and the logits
over the vocabulary, which for a small model with a large vocabulary are the largest single item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from app.runtime.hardware import Hardware
from app.runtime.planner.memory import fmt_bytes
from app.runtime.planner.schema import Choice
from app.runtime.protocol import ErrorKind, RuntimeFailure

GiB = 1 << 30
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SETTINGS = (
    "device",
    "quantize_4bit",
    "rank",
    "alpha",
    "learning_rate",
    "epochs",
    "batch_size",
    "grad_accum",
    "seq_length",
    "grad_checkpointing",
    "packing",
    "threads",
)
CPU_OVERHEAD = int(0.6 * GiB)  # torch, transformers, the tokenizer and the allocator's slack (measured ~0.5 GiB)
CUDA_OVERHEAD = int(0.8 * GiB)  # the CUDA context and cuBLAS workspaces


@dataclass(frozen=True)
class TrainModel:
    """The shape of the base model, as far as training memory cares (from its config.json)."""

    name: str
    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    context_length: int

    @classmethod
    def from_config(cls, config: dict[str, Any], *, name: str = "") -> TrainModel:
        try:
            hidden = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            return cls(
                name=name or str(config.get("_name_or_path") or config.get("model_type", "model")),
                n_layers=int(config["num_hidden_layers"]),
                hidden=hidden,
                intermediate=int(config.get("intermediate_size", 4 * hidden)),
                n_heads=heads,
                n_kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                vocab=int(config["vocab_size"]),
                tied_embeddings=bool(config.get("tie_word_embeddings", False)),
                context_length=int(config.get("max_position_embeddings", 2048)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RuntimeFailure(ErrorKind.MODEL_INVALID, f"The model's config.json lacks {exc}; Hearth cannot plan training for it.") from exc

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of each LoRA target in one layer (llama-style attention and gated MLP)."""
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    @property
    def parameters(self) -> int:
        per_layer = sum(a * b for a, b in self.linear_shapes()) + 2 * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.n_layers * per_layer + embeddings + self.hidden

    def adapter_parameters(self, rank: int) -> int:
        return self.n_layers * sum(rank * (a + b) for a, b in self.linear_shapes())


@dataclass(frozen=True)
class DataStats:
    """What the planner needs to know about the data: how many examples and how long they are."""

    examples: int
    max_tokens: int
    p95_tokens: int
    mean_tokens: int = 0  # 0 = unknown


@dataclass(frozen=True)
class TrainingPlan:
    device: Choice
    quantize_4bit: Choice
    rank: Choice
    alpha: Choice
    learning_rate: Choice
    epochs: Choice
    batch_size: Choice
    grad_accum: Choice
    seq_length: Choice
    grad_checkpointing: Choice
    packing: Choice
    threads: Choice
    memory: Choice  # {"weights", "adapters", "gradients", "optimizer", "activations", "overhead", "total", "budget"}
    steps: int  # optimizer steps for the whole run
    hardware: str

    def settings(self) -> dict[str, Any]:
        """The plain values the trainer takes."""
        return {name: getattr(self, name).value for name in SETTINGS}

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name).to_dict() for name in (*SETTINGS, "memory")}
        data.update(steps=self.steps, hardware=self.hardware)
        return data


def estimate_memory(model: TrainModel, *, device: str, quantize_4bit: bool, rank: int, batch_size: int, seq_length: int, grad_checkpointing: bool) -> dict[str, int]:
    """Bytes at the peak of a training step, item by item."""
    params = model.parameters
    if quantize_4bit:
        # NF4: 4 bits a weight plus one fp32 absmax per 64 (double-quantized: ~0.127 bits); embeddings stay bf16.
        embeddings = model.vocab * model.hidden * (1 if model.tied_embeddings else 2)
        weights = int((params - embeddings) * 4.127 / 8) + embeddings * 2
    else:
        weights = params * (2 if device == "cuda" else 4)
    adapters = model.adapter_parameters(rank) * 4
    gradients = adapters
    optimizer = adapters * 2 if not quantize_4bit else model.adapter_parameters(rank) * 2  # AdamW fp32 / paged 8-bit
    act_bytes = 2 if device == "cuda" else 4
    tokens = batch_size * seq_length
    # Per layer and token, a llama block keeps about 16 hidden-size and 3 intermediate-size values for
    # the backward pass (norms, q/k/v/o, the gated MLP), plus the attention scores where SDPA has no
    # fused kernel (CPU): heads × seq per token.
    per_layer = tokens * (16 * model.hidden + 3 * model.intermediate) * act_bytes
    scores = tokens * model.n_heads * seq_length * act_bytes if device != "cuda" else 0
    if grad_checkpointing:
        activations = model.n_layers * tokens * model.hidden * act_bytes + per_layer + scores
    else:
        activations = model.n_layers * (per_layer + scores)
    # Logits in fp32, their softmax and its gradient: three vocab-wide rows per token.
    activations += 3 * tokens * model.vocab * 4
    overhead = CUDA_OVERHEAD if device == "cuda" else CPU_OVERHEAD
    parts = {"weights": weights, "adapters": adapters, "gradients": gradients, "optimizer": optimizer, "activations": activations, "overhead": overhead}
    parts["total"] = sum(parts.values())
    return parts


def plan_training(model: TrainModel, hw: Hardware, data: DataStats, overrides: dict[str, Any] | None = None) -> TrainingPlan:
    """Every setting with its reason; ``overrides`` pins any of SETTINGS."""
    pinned = dict(overrides or {})
    unknown = set(pinned) - set(SETTINGS)
    if unknown:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"unknown training setting(s): {', '.join(sorted(unknown))}; valid: {', '.join(SETTINGS)}")
    choices: dict[str, Choice] = {}

    def pick(name: str, value: Any, reason: str) -> Any:
        if name in pinned and pinned[name] is not None:
            choices[name] = Choice(pinned[name], f"Set by you (Hearth would choose {value}: {reason})", overridden=True)
        else:
            choices[name] = Choice(value, reason)
        return choices[name].value

    cuda = [g for g in hw.gpus if g.vendor == "nvidia"]
    vram = max((g.vram_free for g in cuda), default=0)
    budget_cuda = int(vram * 0.9)
    budget_ram = int(hw.ram_available * 0.8)
    seq_auto = _seq_length(model, data)
    full_bf16 = estimate_memory(model, device="cuda", quantize_4bit=False, rank=16, batch_size=1, seq_length=seq_auto, grad_checkpointing=True)["total"]

    if cuda:
        device = pick("device", "cuda", f"{cuda[0].name} with {fmt_bytes(vram)} free VRAM: training on the GPU is tens of times faster than on the CPU.")
    else:
        device = pick("device", "cpu", "No NVIDIA GPU: LoRA on the CPU, practical for models up to about 1B parameters.")
    if device == "cuda" and full_bf16 > budget_cuda:
        q4 = pick("quantize_4bit", True, f"The bf16 base needs about {fmt_bytes(full_bf16)} to train, more than the {fmt_bytes(budget_cuda)} of VRAM Hearth uses; QLoRA keeps the base in 4-bit NF4 (bitsandbytes).")
    elif device == "cuda":
        q4 = pick("quantize_4bit", False, f"The bf16 base fits in VRAM ({fmt_bytes(full_bf16)} of {fmt_bytes(budget_cuda)}): plain LoRA is faster and a little more accurate than QLoRA.")
    else:
        q4 = pick("quantize_4bit", False, "4-bit QLoRA needs CUDA; on the CPU the base stays in fp32.")
    if q4 and device != "cuda":
        raise RuntimeFailure(ErrorKind.UNSUPPORTED, "4-bit QLoRA needs an NVIDIA GPU with CUDA; turn it off to train on the CPU.")

    small = model.parameters < 1_000_000_000
    few = data.examples < 200
    if small and few:
        rank = pick("rank", 16, "Unsloth's r = 16: plenty for a small model learning a few hundred facts or less.")
    elif device == "cpu":
        rank = pick("rank", 8, "r = 8 keeps CPU steps short; the adapter still reaches most of the full fine-tune's quality (LoRA paper).")
    else:
        rank = pick("rank", 16, "Unsloth's default r = 16, a good balance of quality and speed on a GPU.")
    pick("alpha", 2 * int(rank), "alpha = 2 × rank, the common choice (Unsloth suggests r to 2r) that keeps the adapter's scale steady if the rank changes.")

    if small and few:
        lr = pick("learning_rate", 1e-3, "A small model and little data: 1e-3, five times the QLoRA recipe's 2e-4, so the facts sink in within a few epochs.")
    elif small:
        lr = pick("learning_rate", 5e-4, "A small model: 5e-4, above the QLoRA recipe's 2e-4, since small models tolerate larger steps.")
    else:
        lr = pick("learning_rate", 2e-4, "2e-4, the QLoRA and Unsloth recipe for LoRA on models of 1B parameters and more.")
    del lr

    if data.examples < 100:
        epochs = pick("epochs", 8, f"Only {data.examples} examples: several passes are needed to learn them (watch the validation loss for overfitting).")
    elif data.examples < 1000:
        epochs = pick("epochs", 3, f"{data.examples} examples: 3 epochs, the top of the recipes' 1–3.")
    else:
        epochs = pick("epochs", 1, f"{data.examples} examples: one epoch is usually enough and avoids overfitting.")

    seq = pick("seq_length", seq_auto, f"Covers {'all' if seq_auto >= data.max_tokens else '95% of'} the examples ({data.p95_tokens} tokens at the 95th percentile, {data.max_tokens} the longest), rounded up to 64; longer ones are cut at the end.")
    target = 16 if not few else 8
    budget = budget_cuda if device == "cuda" else budget_ram
    batch_auto = _largest_batch(model, device=device, q4=bool(q4), rank=int(rank), seq=int(seq), ckpt=False, budget=budget, cap=8 if device == "cuda" else 4)
    ckpt_needed = batch_auto == 0
    if ckpt_needed:
        batch_auto = max(1, _largest_batch(model, device=device, q4=bool(q4), rank=int(rank), seq=int(seq), ckpt=True, budget=budget, cap=8))
    batch = pick("batch_size", batch_auto, f"The largest batch (up to {8 if device == 'cuda' else 4}) whose activations fit in {fmt_bytes(budget)} with sequences of {seq} tokens.")
    accum_auto = max(1, min(round(target / int(batch)), max(1, data.examples // (4 * int(batch)))))
    pick("grad_accum", accum_auto, f"Accumulate to an effective batch of {accum_auto * int(batch)} (the recipes use 8–16), kept small enough that {data.examples} examples still give several optimizer steps an epoch.")
    if ckpt_needed:
        ckpt = pick("grad_checkpointing", True, "Without it the activations do not fit: recompute them in the backward pass (about 30% slower, far less memory).")
    else:
        ckpt = pick("grad_checkpointing", False, "The activations fit without it, and recomputing them would cost about 30% more time.")
    if device == "cuda" and data.examples >= 1000 and 0 < data.mean_tokens * 2 <= int(seq):
        pick("packing", True, f"Many examples, {data.mean_tokens} tokens on average, under half the sequence length: packing several into each sequence wastes no compute on padding.")
    else:
        pick("packing", False, "Few or long examples, or no FlashAttention on this device: padding each example costs little and keeps examples apart.")
    pick("threads", max(1, hw.cpu_cores_physical), f"One thread per physical core ({hw.cpu_cores_physical}); more only fight over the same cores.")

    parts = estimate_memory(model, device=str(device), quantize_4bit=bool(q4), rank=int(rank), batch_size=int(batch), seq_length=int(seq), grad_checkpointing=bool(ckpt))
    parts["budget"] = budget
    where = "VRAM" if device == "cuda" else "RAM"
    words = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in parts.items() if k not in ("total", "budget"))
    verdict = "fits" if parts["total"] <= budget else "does NOT fit"
    choices["memory"] = Choice(parts, f"About {fmt_bytes(parts['total'])} at the peak ({words}); {verdict} in the {fmt_bytes(budget)} of {where} Hearth may use.")
    steps_per_epoch = math.ceil(max(1, data.examples) / (int(batch) * int(choices["grad_accum"].value)))
    return TrainingPlan(**choices, steps=int(math.ceil(steps_per_epoch * float(epochs))), hardware=hw.source)


def _seq_length(model: TrainModel, data: DataStats) -> int:
    want = data.max_tokens if data.max_tokens <= 2 * max(data.p95_tokens, 1) else data.p95_tokens
    return int(min(model.context_length, 4096, max(64, 64 * math.ceil(want / 64))))


def _largest_batch(model: TrainModel, *, device: str, q4: bool, rank: int, seq: int, ckpt: bool, budget: int, cap: int) -> int:
    best = 0
    for batch in range(1, cap + 1):
        if estimate_memory(model, device=device, quantize_4bit=q4, rank=rank, batch_size=batch, seq_length=seq, grad_checkpointing=ckpt)["total"] <= budget:
            best = batch
    return best
