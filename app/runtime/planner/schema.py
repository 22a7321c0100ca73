"""The planner's inputs and outputs: user preferences, one choice with its reason, the plan.

Everything here is plain data that round-trips through JSON, so a plan can cross the worker
protocol, be shown in the UI and be stored next to a benchmark.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from app.runtime.planner import quant
from app.runtime.protocol import ErrorKind, RuntimeFailure

GiB = 1 << 30
BACKENDS = ("llama.cpp", "torch")
PLAN_SCHEMA_VERSION = 1


def _invalid(message: str) -> RuntimeFailure:
    return RuntimeFailure(ErrorKind.INVALID_PARAMS, message)


@dataclass(frozen=True)
class UserPrefs:
    """What the person pinned; None means "Hearth chooses". An override always wins.

    ``gpu_layers`` uses llama.cpp's count: the repeating layers plus one for the output layer, so
    ``n_layers + 1`` (or -1) means everything on the GPU.
    """

    context_length: int | None = None
    gpu_layers: int | None = None
    kv_type: str | None = None  # f16, q8_0, q4_0, ...
    flash_attention: bool | None = None
    threads: int | None = None
    threads_batch: int | None = None
    batch_size: int | None = None  # llama.cpp n_batch
    ubatch_size: int | None = None  # llama.cpp n_ubatch
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    backend: str | None = None  # "llama.cpp" or "torch"
    safety_margin_bytes: int = GiB  # kept free on every GPU, exactly this much
    ram_margin_bytes: int = GiB  # kept free in RAM

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            wants_bool = f.name in ("flash_attention", "use_mmap", "use_mlock")
            wants_str = f.name in ("kv_type", "backend")
            if wants_bool and not isinstance(value, bool):
                raise _invalid(f"'{f.name}' must be true or false, not {value!r}")
            if wants_str and not isinstance(value, str):
                raise _invalid(f"'{f.name}' must be a string, not {value!r}")
            if not wants_bool and not wants_str and (isinstance(value, bool) or not isinstance(value, int)):
                raise _invalid(f"'{f.name}' must be a whole number, not {value!r}")
        if self.context_length is not None and self.context_length < 16:
            raise _invalid("context_length must be at least 16 tokens")
        if self.gpu_layers is not None and self.gpu_layers < -1:
            raise _invalid("gpu_layers must be -1 (all), 0 or more")
        if self.kv_type is not None and self.kv_type not in quant.KV_TYPES:
            raise _invalid(f"kv_type {self.kv_type!r} is not one of {', '.join(quant.KV_TYPES)}")
        if self.kv_type is not None and quant.kv_is_quantized(self.kv_type) and self.flash_attention is False:
            raise _invalid(f"a {self.kv_type} KV cache needs flash attention; turn it on or use f16")
        if self.backend is not None and self.backend not in BACKENDS:
            raise _invalid(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        for name in ("threads", "threads_batch", "batch_size", "ubatch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise _invalid(f"'{name}' must be at least 1")
        if self.batch_size is not None and self.ubatch_size is not None and self.ubatch_size > self.batch_size:
            raise _invalid("ubatch_size cannot be larger than batch_size")
        if self.safety_margin_bytes < 0 or self.ram_margin_bytes < 0:
            raise _invalid("memory margins cannot be negative")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> UserPrefs:
        raw = dict(raw or {})
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise _invalid(f"unknown planner preference(s): {', '.join(sorted(unknown))}")
        return cls(**raw)


@dataclass(frozen=True)
class Choice:
    """One decision: the value, why, and whether the person set it."""

    value: Any  # JSON-compatible: str, int, float, bool, list or dict of those
    reason: str
    overridden: bool = False

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ValueError("every choice needs a reason")

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "reason": self.reason, "overridden": self.overridden}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Choice:
        return cls(raw["value"], str(raw["reason"]), bool(raw.get("overridden", False)))


CHOICE_FIELDS = (
    "backend",
    "quantization",
    "gpu_layers",
    "context_length",
    "kv_type",
    "kv_eviction",
    "flash_attention",
    "threads",
    "batch",
    "mmap",
    "mlock",
    "memory",
    "speed",
)


@dataclass(frozen=True)
class Plan:
    """How to run one model on one machine. Every field is a Choice with its reason.

    Values: ``gpu_layers`` is ``{"n_gpu_layers", "repeating", "n_layers", "output_on_gpu",
    "per_device", "tensor_split", "op_offload"}``; ``memory`` is ``{"devices": [...], "source"}`` with
    bytes per device; ``speed`` is ``{"decode_tokens_per_s", ...}``.
    """

    model_id: str
    model_name: str
    hardware: str  # "probe" or the profile's name
    backend: Choice
    quantization: Choice
    gpu_layers: Choice
    context_length: Choice
    kv_type: Choice
    kv_eviction: Choice
    flash_attention: Choice
    threads: Choice
    batch: Choice
    mmap: Choice
    mlock: Choice
    memory: Choice
    speed: Choice
    schema_version: int = PLAN_SCHEMA_VERSION

    def choices(self) -> dict[str, Choice]:
        return {name: getattr(self, name) for name in CHOICE_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema_version": self.schema_version,
            "model_id": self.model_id,
            "model_name": self.model_name,
            "hardware": self.hardware,
        }
        data.update({name: choice.to_dict() for name, choice in self.choices().items()})
        return data

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Plan:
        version = int(raw.get("schema_version", PLAN_SCHEMA_VERSION))
        if version != PLAN_SCHEMA_VERSION:
            raise _invalid(f"plan schema {version} is not the {PLAN_SCHEMA_VERSION} this Hearth reads; plan again")
        try:
            return cls(
                model_id=str(raw["model_id"]),
                model_name=str(raw["model_name"]),
                hardware=str(raw["hardware"]),
                schema_version=version,
                **{name: Choice.from_dict(raw[name]) for name in CHOICE_FIELDS},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _invalid(f"not a complete plan: {exc}") from exc


class ContextTooLarge(RuntimeFailure):
    """The person's context length cannot fit; ``largest_fit`` is what can (0: nothing fits)."""

    def __init__(self, message: str, *, requested: int, largest_fit: int, detail: str = ""):
        super().__init__(ErrorKind.OUT_OF_MEMORY, message, detail=detail)
        self.requested = requested
        self.largest_fit = largest_fit


class TooManyGpuLayers(RuntimeFailure):
    """The person's pinned GPU layer count cannot fit; ``largest_fit`` is what can."""

    def __init__(self, message: str, *, requested: int, largest_fit: int, detail: str = ""):
        super().__init__(ErrorKind.OUT_OF_MEMORY, message, detail=detail)
        self.requested = requested
        self.largest_fit = largest_fit
