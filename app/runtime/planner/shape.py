"""A model's shape as the memory model needs it: bytes per layer, embeddings, output, KV geometry.

``ModelShape.estimate`` works from ``ModelInfo`` alone (and so from a hub listing before a
download): the file's tensor bytes are its size less the metadata (mostly the tokenizer, about 36
bytes per vocabulary entry for a BPE vocabulary), the embedding and output matrices are sized from
``vocab_size * n_embd`` and the tensor type llama.cpp's quantizer gives them, and the rest is spread
evenly over the repeating layers. ``read_shape`` reads the same numbers exactly from a GGUF's tensor
table; the planner takes either, so a caller with the file at hand should pass the exact one.

What ``ModelInfo`` cannot say is estimated and marked as such: whether the output projection is
tied to the embeddings (assumed for models under 4B parameters and for Gemma, as is the custom), the
feed-forward width, and whether the model is a mixture of experts (never guessed: pass
``n_expert``/``n_expert_used``, or use ``read_shape``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.runtime.planner import quant

if TYPE_CHECKING:
    from app.runtime.library import ModelInfo

METADATA_BYTES_PER_TOKEN = 36  # SmolLM2's GGUF: 1,785,664 bytes of header for 49,152 tokens
METADATA_BASE_BYTES = 32 * 1024
TIED_BELOW_PARAMETERS = 4_000_000_000
_TIED_ARCHITECTURES = ("gemma", "gemma2", "gemma3", "gemma3n")
_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelShape:
    name: str
    quantization: str  # llama.cpp file type, e.g. "Q4_K_M"
    file_size: int
    parameters: int
    context_length: int  # trained context; 0 when the file does not say
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    vocab_size: int
    n_ff: int  # feed-forward width (per expert for a mixture of experts)
    layer_bytes: tuple[int, ...]  # weights of each repeating layer, first to last
    token_embd_bytes: int  # input embeddings; llama.cpp always keeps them on the CPU
    output_bytes: int  # output norm + projection (a copy of the embeddings when tied)
    tied_embeddings: bool
    metadata_bytes: int
    n_expert: int = 0
    n_expert_used: int = 0
    expert_share: float = 0.0  # fraction of a layer's bytes that are expert FFN weights
    largest_layer_tensor: int = 0  # bytes of one layer's largest weight matrix
    source: str = "estimate"  # "estimate" (from ModelInfo) or "file" (the GGUF tensor table)
    notes: tuple[str, ...] = ()  # what was assumed, in words
    compute_scale: float = 1.0  # llama.cpp's measured compute buffer over memory.compute_bytes (dryrun.confirm)

    def __post_init__(self) -> None:
        if min(self.n_layers, self.n_embd, self.n_head, self.n_head_kv, self.head_dim, self.vocab_size) <= 0:
            raise ValueError(
                f"{self.name}: the file does not describe its shape (layers {self.n_layers}, embedding "
                f"{self.n_embd}, heads {self.n_head}/{self.n_head_kv}, vocabulary {self.vocab_size})"
            )
        if len(self.layer_bytes) != self.n_layers or min(self.layer_bytes) <= 0:
            raise ValueError(f"{self.name}: need a positive size for each of the {self.n_layers} layers")
        if self.n_expert and not 0 < self.n_expert_used <= self.n_expert:
            raise ValueError(f"{self.name}: {self.n_expert_used} of {self.n_expert} experts used per token")

    @property
    def weights_bytes(self) -> int:
        """What llama.cpp's model buffers hold with everything in one place (the file's tensors)."""
        return self.token_embd_bytes + sum(self.layer_bytes) + (0 if self.tied_embeddings else self.output_bytes)

    @property
    def kv_embd(self) -> int:
        """Width of one token's K (or V) row in one layer."""
        return self.n_head_kv * self.head_dim

    @property
    def active_fraction(self) -> float:
        """Share of a layer's bytes read per decoded token (all of it, unless experts are skipped)."""
        if not self.n_expert:
            return 1.0
        return 1.0 - self.expert_share * (1.0 - self.n_expert_used / self.n_expert)

    @classmethod
    def estimate(
        cls,
        info: ModelInfo,
        *,
        tied_embeddings: bool | None = None,
        n_ff: int | None = None,
        n_expert: int = 0,
        n_expert_used: int = 0,
    ) -> ModelShape:
        return _estimate(
            name=info.name,
            quantization=info.quantization,
            file_size=info.file_size,
            parameters=info.parameters,
            context_length=info.context_length,
            n_layers=info.n_layers,
            n_embd=info.n_embd,
            n_head=info.n_head,
            n_head_kv=info.n_head_kv,
            head_dim=info.head_dim,
            vocab_size=info.vocab_size,
            architecture=info.architecture,
            tied_embeddings=tied_embeddings,
            n_ff=n_ff,
            n_expert=n_expert,
            n_expert_used=n_expert_used,
        )

    def for_file(self, file_size: int, quantization: str) -> ModelShape:
        """The same model in another quantization (a download candidate), re-estimated."""
        return _estimate(
            name=self.name,
            quantization=quantization,
            file_size=file_size,
            parameters=self.parameters,
            context_length=self.context_length,
            n_layers=self.n_layers,
            n_embd=self.n_embd,
            n_head=self.n_head,
            n_head_kv=self.n_head_kv,
            head_dim=self.head_dim,
            vocab_size=self.vocab_size,
            architecture="",
            tied_embeddings=self.tied_embeddings,
            n_ff=self.n_ff,
            n_expert=self.n_expert,
            n_expert_used=self.n_expert_used,
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layer_bytes"] = list(self.layer_bytes)
        data["notes"] = list(self.notes)
        return data


def _attention_parameters(n_embd: int, n_head: int, n_head_kv: int, head_dim: int) -> int:
    # q and o are n_embd x (n_head * head_dim); k and v are n_embd x (n_head_kv * head_dim)
    return n_embd * head_dim * (2 * n_head + 2 * n_head_kv)


def _estimate(
    *,
    name: str,
    quantization: str,
    file_size: int,
    parameters: int,
    context_length: int,
    n_layers: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int,
    head_dim: int,
    vocab_size: int,
    architecture: str,
    tied_embeddings: bool | None,
    n_ff: int | None,
    n_expert: int,
    n_expert_used: int,
) -> ModelShape:
    notes: list[str] = []
    if tied_embeddings is None:
        tied_embeddings = architecture.startswith(_TIED_ARCHITECTURES) or 0 < parameters < TIED_BELOW_PARAMETERS
        notes.append(
            "output projection assumed tied to the embeddings (usual below 4B parameters)"
            if tied_embeddings
            else "output projection assumed separate from the embeddings (usual above 4B parameters)"
        )
    metadata = min(METADATA_BASE_BYTES + METADATA_BYTES_PER_TOKEN * vocab_size, file_size // 10)
    tensors = file_size - metadata
    matrix = vocab_size * n_embd
    out_type = quant.output_type(quantization, n_embd)
    embd_type = out_type if tied_embeddings else quant.embedding_type(quantization, n_embd)
    token_embd = quant.tensor_bytes(embd_type, matrix)
    output = quant.tensor_bytes(out_type, matrix) + 4 * n_embd  # + the f32 output norm
    layers_total = tensors - token_embd - (0 if tied_embeddings else output)
    if layers_total <= 0:
        # a file smaller than its own embeddings would be: spread it by parameter count instead
        share = 1.0 - matrix * (1 if tied_embeddings else 2) / max(parameters, 1)
        layers_total = int(tensors * max(share, 0.5))
        notes.append("file smaller than the embeddings' expected size; layers sized by parameter share")
    per_layer = layers_total // max(n_layers, 1)

    embedding_params = matrix * (1 if tied_embeddings else 2) + n_embd
    layer_params = max((parameters - embedding_params) / max(n_layers, 1), 1.0)
    attention = _attention_parameters(n_embd, n_head, n_head_kv, head_dim)
    ffn_params = max(layer_params - attention - 2 * n_embd - n_expert * n_embd, 0.0)
    if n_ff is None:
        n_ff = max(int(ffn_params / (3 * n_embd * max(n_expert, 1))), n_embd)
        notes.append(f"feed-forward width estimated from the parameter count ({n_ff})")
    bytes_per_param = per_layer / layer_params
    expert_share = min(ffn_params / layer_params, 1.0) if n_expert else 0.0
    largest = n_embd * max(n_ff * max(n_expert, 1), n_head * head_dim) * bytes_per_param
    return ModelShape(
        name=name,
        quantization=quantization,
        file_size=file_size,
        parameters=parameters,
        context_length=context_length,
        n_layers=n_layers,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        vocab_size=vocab_size,
        n_ff=n_ff,
        layer_bytes=(per_layer,) * n_layers,
        token_embd_bytes=token_embd,
        output_bytes=output,
        tied_embeddings=tied_embeddings,
        metadata_bytes=metadata,
        n_expert=n_expert,
        n_expert_used=n_expert_used,
        expert_share=expert_share,
        largest_layer_tensor=int(min(largest, per_layer)),
        source="estimate",
        notes=tuple(notes),
    )


def read_shape(info: ModelInfo) -> ModelShape:
    """The exact shape from the GGUF tensor table of ``info.path`` (reads the header, not the
    weights). Not pure: this is the I/O the planner itself never does."""
    from app.runtime.library import open_gguf

    reader = open_gguf(info.path)
    arch = info.architecture
    layers = [0] * info.n_layers
    largest = experts = 0
    token_embd = output = 0
    has_output = False
    for tensor in reader.tensors:
        size = int(tensor.n_bytes)
        match = _LAYER_TENSOR.match(tensor.name)
        if match and int(match.group(1)) < info.n_layers:
            layers[int(match.group(1))] += size
            largest = max(largest, size)
            experts += size if "_exps." in tensor.name else 0
        elif tensor.name == "token_embd.weight":
            token_embd += size
        elif tensor.name == "output.weight":
            output += size
            has_output = True
        else:  # output_norm, rope factors: small, kept with the output layer
            output += size

    def field(key: str) -> int:
        f = reader.fields.get(f"{arch}.{key}")
        if f is None:
            return 0
        value = f.contents()
        return int(max(value)) if isinstance(value, list) else int(value or 0)

    tensors = sum(layers) + token_embd + output
    if not has_output:
        output += token_embd  # llama.cpp loads a second copy of the embeddings as the output
    n_expert = field("expert_count")
    return ModelShape(
        name=info.name,
        quantization=info.quantization,
        file_size=info.file_size,
        parameters=info.parameters,
        context_length=info.context_length,
        n_layers=info.n_layers,
        n_embd=info.n_embd,
        n_head=info.n_head,
        n_head_kv=info.n_head_kv,
        head_dim=info.head_dim,
        vocab_size=info.vocab_size,
        n_ff=field("expert_feed_forward_length") or field("feed_forward_length") or info.n_embd * 4,
        layer_bytes=tuple(layers),
        token_embd_bytes=token_embd,
        output_bytes=output,
        tied_embeddings=not has_output,
        metadata_bytes=info.file_size - tensors,
        n_expert=n_expert,
        n_expert_used=field("expert_used_count") if n_expert else 0,
        expert_share=experts / max(sum(layers), 1),
        largest_layer_tensor=largest,
        source="file",
    )
