"""Whether speculative decoding pays, with which drafter, how many tokens per guess, and where the
draft model goes: pure functions of measured costs, each answer with its reason.

The cost model (SpecExec/Dovetail's, in its simplest form). A step drafts ``k`` tokens, then the
target evaluates the pending token and the k drafts in one batch. If each draft is accepted with
probability ``a`` independently, a step yields ``1 + a + ... + a^k`` tokens on average (the target's
own token at the first disagreement included). It costs ``verify(k + 1)`` (the measured cost of
``k + 1`` tokens in one batch, relative to one token) plus ``k * draft`` (a draft token relative to a
target token; 0 for prompt lookup). The predicted speed-up is their ratio; ``k = 0`` is plain
decoding (1.0). On a compute-bound target (a small model on a CPU: verify(5) is about 2.9 here)
the ceiling is low; on a memory-bound one (a big model on a CPU, an offloaded model, most GPUs)
verify(n) stays near 1 and guessing pays a lot.

Nothing here measures: the verify-cost curve comes from the measurement store (``spec.costs``
measures it at first use), the acceptance rate from the running reply.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.runtime.planner.schema import Choice, Plan

K_MAX = 12  # the longest guess: past it the acceptance of a real drafter makes more tokens useless
MIN_GAIN = 1.10  # speculate only when the prediction beats plain decoding by this much: measured ÷ predicted is 0.84-0.96 here (overheads the curve leaves out)
PRIOR_ACCEPTANCE = {"lookup": 0.6, "draft": 0.7}  # before a reply has shown its own rate
COPY_ACCEPTANCE = 0.9  # what prompt lookup reaches while a reply quotes its context
MODES = ("auto", "off", "lookup")  # and "draft:MODEL"
# Auto considers a library model as a draft only when its file is at most this share of the target's.
# Decoding is memory-bound where drafts pay, so a draft token costs about its file-size ratio r of a
# target token. Even on an ideal target (verify(n) = 1) at the prior draft acceptance (0.7), the
# best a draft can give is k = 1: 1.7 / (1 + r), which falls to MIN_GAIN (1.10) at r = 0.55; at 0.5 it is
# 1.13x, the least worth the draft model's memory and loading, with some room for a verify cost
# above 1. A bigger file can never pay, so it is not worth a vocabulary read (tests check this).
DRAFT_SIZE_RATIO = 0.5


@dataclass(frozen=True)
class VerifyCurve:
    """Seconds to evaluate n tokens in one batch, for some n (1 always): ``relative(n)`` is cost(n)/cost(1),
    interpolated between measured points and extended along the last segment past them."""

    seconds: Mapping[int, float]
    source: str = "measured"

    def __post_init__(self) -> None:
        if 1 not in self.seconds or any(n < 1 or s <= 0 for n, s in self.seconds.items()):
            raise ValueError("a verify-cost curve needs n=1 and positive costs")

    def relative(self, n: int) -> float:
        points = sorted(self.seconds.items())
        one = self.seconds[1]
        if n <= 1:
            return 1.0
        for (n0, s0), (n1, s1) in zip(points, points[1:]):
            if n0 <= n <= n1:
                return max((s0 + (s1 - s0) * (n - n0) / (n1 - n0)) / one, 1.0)
        if len(points) == 1:
            return float(n)  # nothing measured past one token: assume the worst (compute-bound)
        (n0, s0), (n1, s1) = points[-2], points[-1]
        return max(s1 + (s1 - s0) * (n - n1) / (n1 - n0), s1) / one

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": {str(n): s for n, s in sorted(self.seconds.items())}, "source": self.source,
                "relative": {str(n): round(self.relative(n), 3) for n in sorted(self.seconds)}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VerifyCurve:
        return cls({int(n): float(s) for n, s in dict(data["seconds"]).items()}, str(data.get("source", "measured")))

    @classmethod
    def memory_bound(cls, per_token: float = 0.02) -> VerifyCurve:
        """What a target whose weights dominate each step looks like (an estimate for a hardware
        profile, where nothing can be measured): each extra token in the batch costs 2%."""
        return cls({n: 1.0 + per_token * (n - 1) for n in (1, 2, 4, 8, 16)}, source="estimate (memory-bound)")


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens one verify step yields on average: 1 + a + a^2 + ... + a^k."""
    a = min(max(acceptance, 0.0), 1.0)
    return float(k + 1) if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)


def predicted_speedup(acceptance: float, k: int, curve: VerifyCurve, draft_cost: float = 0.0) -> float:
    """Tokens per unit of time relative to plain decoding, for guesses of ``k`` tokens."""
    if k <= 0:
        return 1.0
    return expected_tokens(acceptance, k) / (curve.relative(k + 1) + k * draft_cost)


def best_k(acceptance: float, curve: VerifyCurve, *, draft_cost: float = 0.0, k_max: int = K_MAX,
           min_gain: float = MIN_GAIN) -> tuple[int, float]:
    """The k with the best predicted speed-up, and that speed-up; (0, 1.0) when none beats ``min_gain``."""
    best, gain = 0, 1.0
    for k in range(1, max(k_max, 0) + 1):
        s = predicted_speedup(acceptance, k, curve, draft_cost)
        if s > gain:
            best, gain = k, s
    return (best, gain) if gain >= min_gain else (0, 1.0)


@dataclass(frozen=True)
class SpecChoice:
    """The planner's answer for one reply: the drafter ("lookup", "draft:MODEL" or None), the
    starting k, the predicted speed-up and why."""

    drafter: str | None
    k: int
    predicted: float
    reason: str

    @property
    def on(self) -> bool:
        """A drafter is used; ``k`` is only where it starts (each step chooses its own, 0 included)."""
        return self.drafter is not None

    def to_dict(self) -> dict[str, Any]:
        return {"drafter": self.drafter, "k": self.k, "predicted_speedup": round(self.predicted, 3), "reason": self.reason}


def parse_mode(mode: str | None) -> tuple[str, str | None]:
    """("auto"|"off"|"lookup"|"draft", model or None); ValueError with the choices for anything else."""
    mode = (mode or "auto").strip()
    if mode in MODES:
        return mode, None
    if mode.startswith("draft:") and mode[len("draft:"):].strip():
        return "draft", mode[len("draft:"):].strip()
    raise ValueError(f"unknown speculation mode {mode!r}: use auto, off, lookup or draft:MODEL")


def choose(mode: str | None, *, curve: VerifyCurve | None, constrained: bool = False, draft_cost: float | None = None,
           acceptance: Mapping[str, float] | None = None) -> SpecChoice:
    """On or off for one reply, the drafter and the first k.

    ``curve`` is the target's measured verify-cost curve (None: not measured, and it cannot be:
    then auto stays off); ``draft_cost`` a draft-model token relative to a target token (None when
    no draft model is asked for or available); ``acceptance`` the rates measured before, per drafter
    kind. A person's explicit choice is kept even when the model predicts a loss (the reason says
    so), except where speculation cannot work at all (a grammar).
    """
    kind, model = parse_mode(mode)
    rates = {**PRIOR_ACCEPTANCE, **dict(acceptance or {})}
    if kind == "off":
        return SpecChoice(None, 0, 1.0, "speculation is off (asked)")
    if constrained:
        return SpecChoice(None, 0, 1.0, "off: a grammar or logits mask constrains the reply")
    if curve is None:
        if kind == "auto":
            return SpecChoice(None, 0, 1.0, "off: the verify cost of this model is not measured yet")
        curve = VerifyCurve({1: 1.0, 2: 2.0})  # unmeasured: plan for the worst, keep the person's choice
    if kind == "draft":
        cost = 1.0 if draft_cost is None else draft_cost
        k, gain = best_k(rates["draft"], curve, draft_cost=cost)
        name = f"draft:{model}"
        if k == 0:
            k = 2
            return SpecChoice(name, k, predicted_speedup(rates["draft"], k, curve, cost),
                              f"asked for; the cost model predicts no gain (verify(3) = {curve.relative(3):.2f}x, draft {cost:.2f}x)")
        return SpecChoice(name, k, gain, f"draft model {model}: predicted {gain:.2f}x with k={k} at acceptance {rates['draft']:.0%}")
    # Prompt lookup costs nothing when it finds no match and is scored every step for free, so it
    # stays on whenever a run of good guesses (COPY_ACCEPTANCE) would pay; each step's k then follows
    # the running acceptance rate, and is 0 (a plain step) while guessing would lose.
    copy_k, copy_gain = best_k(COPY_ACCEPTANCE, curve)
    start_k, _ = best_k(rates["lookup"], curve)
    if copy_k == 0:
        why = (f"verifying costs too much here (verify(2) = {curve.relative(2):.2f}x one token, verify(5) = {curve.relative(5):.2f}x), "
               f"so even {COPY_ACCEPTANCE:.0%} accepted guesses would not pay")
        if kind == "lookup":
            return SpecChoice("lookup", 0, 1.0, f"asked for, but {why}: each step guesses only while the running acceptance says it pays")
        return SpecChoice(None, 0, 1.0, f"off: {why}")
    return SpecChoice("lookup", max(start_k, 1), copy_gain,
                      f"prompt lookup: up to {copy_gain:.2f}x while the reply repeats its context (k={copy_k} at {COPY_ACCEPTANCE:.0%} "
                      f"acceptance; verify({copy_k + 1}) = {curve.relative(copy_k + 1):.2f}x one token); k follows the running acceptance rate")


# ---- auto: a draft model from the library, or prompt lookup ------------------------------------


@dataclass(frozen=True)
class DraftOption:
    """A library model that could draft: its id, a draft token's cost relative to a target token,
    and where that figure comes from ("measured" on this machine, else "estimate" from file sizes)."""

    name: str
    cost: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cost": round(self.cost, 4), "source": self.source}


def draft_cost(*, draft_seconds: float | None, target_seconds: float | None, draft_bytes: int, target_bytes: int) -> tuple[float, str]:
    """A draft token relative to a target token: measured when both token times are known (the
    draft's from an earlier use, the target's from its verify-cost curve), else estimated from the
    file sizes (decoding reads every weight once per token: memory-bound)."""
    if draft_seconds and target_seconds:
        return draft_seconds / target_seconds, "measured"
    return draft_bytes / max(target_bytes, 1), "estimate"


@dataclass(frozen=True)
class AutoDraft:
    """Auto's answer between the best draft model and prompt lookup: ``draft`` the option used
    (None: prompt lookup stays), ``considered`` the best option, their predicted speed-ups and why."""

    draft: DraftOption | None
    considered: DraftOption | None
    draft_speedup: float
    lookup_speedup: float
    k: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"used": self.draft is not None, "considered": self.considered.to_dict() if self.considered else None,
                "draft_speedup": round(self.draft_speedup, 3), "lookup_speedup": round(self.lookup_speedup, 3), "k": self.k,
                "reason": self.reason}


def choose_draft(options: Sequence[DraftOption], *, curve: VerifyCurve, acceptance: Mapping[str, float] | None = None,
                 cost: float | None = None, min_gain: float = MIN_GAIN) -> AutoDraft:
    """Whether auto drafts with a model, and with which: each option's predicted speed-up at the prior
    draft acceptance against prompt lookup's at its own prior. Lookup costs nothing when it finds no
    match, so a draft is used only where it is predicted to beat lookup (and plain decoding).

    ``acceptance`` and ``cost`` replace the priors and every option's cost (tests force a choice
    with them); ``curve`` is the target's verify-cost curve as loaded.
    """
    rates = {**PRIOR_ACCEPTANCE, **dict(acceptance or {})}
    _, lookup = best_k(rates["lookup"], curve, min_gain=min_gain)
    if not options:
        return AutoDraft(None, None, 1.0, lookup, 0, "no draft model to consider")
    scored = []
    for option in options:
        option = option if cost is None else dataclasses.replace(option, cost=cost, source="given")
        k, gain = best_k(rates["draft"], curve, draft_cost=option.cost, min_gain=min_gain)
        scored.append((gain, k, option))
    gain, k, best = max(scored, key=lambda s: s[0])
    others = f" (the best of {len(options)})" if len(options) > 1 else ""
    said = (f"draft model {best.name}{others} considered: {gain:.2f}x predicted (k={k} at {rates['draft']:.0%} acceptance, "
            f"a draft token {best.cost:.2f}x a target token, {best.source}) against {lookup:.2f}x for prompt lookup at "
            f"{rates['lookup']:.0%}")
    if k > 0 and gain > lookup:
        return AutoDraft(best, best, gain, lookup, k, f"{said}: used")
    return AutoDraft(None, best, gain, lookup, k, f"{said}: not used, prompt lookup costs nothing when it finds no match")


# ---- where a draft model goes (Dovetail) -------------------------------------------------------


@dataclass(frozen=True)
class DraftPlacement:
    device: str  # "gpu" | "cpu" | "none" (no room anywhere)
    n_gpu_layers: int  # the draft's llama.cpp n_gpu_layers (-1 = all)
    target_gpu_layers: int | None  # the target's, when it should give some up for the draft; None = unchanged
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "n_gpu_layers": self.n_gpu_layers, "target_gpu_layers": self.target_gpu_layers, "reason": self.reason}


def place_draft(target_plan: Any, draft_bytes: int) -> DraftPlacement:
    """Where the draft model runs, from the target's plan (its ``gpu_layers`` and ``memory`` values).

    Dovetail's split: when most of the target runs on the CPU, the GPU is best used by the draft,
    which runs k times per step, while the target's few GPU layers save little; so the draft goes
    on the GPU, and the target gives up the GPU layers the draft needs when there is no free room.
    A target that is mostly on the GPU keeps its layers; the draft goes where room is left.
    """
    layers = dict(target_plan.gpu_layers.value)
    devices = list(target_plan.memory.value.get("devices") or [])
    gpus = [d for d in devices if str(d.get("device", "")).startswith("gpu")]
    cpu = next((d for d in devices if d.get("device") == "cpu"), None)
    need = int(draft_bytes * 1.2)  # weights plus a small context and its compute buffer
    cpu_room = int(cpu["budget"] - cpu["total"]) if cpu else 0
    if not gpus:
        if cpu_room >= need:
            return DraftPlacement("cpu", 0, None, "no GPU: the draft model runs on the CPU beside the target")
        return DraftPlacement("none", 0, None, f"no room for the draft model ({need / 2**20:.0f} MiB) beside the target")
    gpu = max(gpus, key=lambda d: d["budget"] - d["total"])
    room = int(gpu["budget"] - gpu["total"])
    n_layers = max(int(layers.get("n_layers") or 1), 1)
    on_gpu = int(layers.get("repeating") or 0)
    mostly_cpu = on_gpu < n_layers / 2
    if room >= need:
        why = ("Dovetail split: the target is mostly on the CPU, so the draft runs on the GPU" if mostly_cpu
               else "the target is mostly on the GPU and the draft model fits beside it")
        return DraftPlacement("gpu", -1, None, why)
    # a layer given up frees its weights and its KV cache (the compute buffer stays for op offload)
    freed = int(gpu.get("weights", 0)) + int(gpu.get("kv", 0))
    if mostly_cpu and on_gpu > 0 and room + freed >= need:
        per_layer = max(freed // on_gpu, 1)
        give = min(on_gpu, math.ceil((need - room) / per_layer))
        return DraftPlacement("gpu", -1, int(layers.get("n_gpu_layers", on_gpu)) - give,
                              f"Dovetail split: the target is mostly on the CPU ({on_gpu}/{n_layers} layers on the GPU); it gives up "
                              f"{give} GPU layer(s) so that the draft model, which runs k times per step, fits on the GPU")
    if cpu_room >= need:
        return DraftPlacement("cpu", 0, None, "the GPU is full with the target's layers: the draft model runs on the CPU")
    return DraftPlacement("none", 0, None, f"no room for the draft model ({need / 2**20:.0f} MiB) beside the target")


@dataclass(frozen=True)
class DovetailSplit:
    """A target reloaded with fewer GPU layers so that its draft model fits on the GPU: the target's
    file, its GPU layers now (llama.cpp's count), how many it gave up, and the draft's name and file."""

    model_path: str
    n_gpu_layers: int
    gave_up: int
    draft_name: str
    draft_path: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_PINNED = re.compile(r"^Pinned by you: -?\d+ \(llama\.cpp's count; \d+ = all\)\. ")


def split_plan(made: Plan, split: DovetailSplit | None) -> Plan:
    """The plan of a target loaded under ``split``, saying so: its GPU layers are not the person's pin
    but the draft model's share (``gpu_layers.value["given_to_draft"]``, and the reason)."""
    if split is None or made.backend.value != "llama.cpp" or made.gpu_layers.value.get("n_gpu_layers") != split.n_gpu_layers:
        return made
    if "given_to_draft" in made.gpu_layers.value:
        return made  # said already (a plan confirmed by a dry run comes back through here)
    reason = _PINNED.sub("", made.gpu_layers.reason)  # the pin is the split's, not the person's
    why = (f"Dovetail split: the model gave up {split.gave_up} GPU layer(s), keeping {split.n_gpu_layers}, so that its draft model "
           f"{split.draft_name}, which runs k times per guess, fits on the GPU. ")
    value = {**made.gpu_layers.value, "given_to_draft": split.gave_up}
    return dataclasses.replace(made, gpu_layers=Choice(value, why + reason, overridden=False))
