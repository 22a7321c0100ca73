"""`hearth bench spec`'s offload case: SmolLM2 in the torch backend with two thirds of its layers on disk,
SpecExec off and on.

The target is the embedded GGUF, dequantized into the cached HF folder (`hf_folder`), then split into
two safetensors shards: the embeddings, the head and the first third of the layers (kept in RAM), and
the other two thirds (on disk). A pinned accelerate device map says so. transformers memory-maps the
disk shard and accelerate copies each offloaded layer's weights out of it when the layer runs, so
without care the page cache would serve the "disk" from RAM: after every forward of the target,
``posix_fadvise(POSIX_FADV_DONTNEED)`` drops that one file's pages (its mapping is closed by then),
and the next forward reads it from the disk again. ``/proc/self/io`` (``read_bytes``: what this
process made the block layer read) shows that it did. The machine-wide caches are never dropped.

The draft is the same model held entirely in RAM (the torch backend's choice of weight type:
the full model unless int8 was measured faster here), loaded from the unsplit folder
so that none of its pages are the disk shard's. Speculation off and on run in interleaved pairs
(the order alternating) on the same loaded backend, each run from an empty cache; the figures are
medians over the pairs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROMPT = ("Write a long, detailed story about a lighthouse keeper who finds a message in a bottle. "
          "Describe the island, the weather and the keeper's daily routine.")
RESIDENT_SHARE = 1 / 3  # the first third of the layers stays in RAM; the rest goes to disk
RESIDENT_FILE = "model-00001-of-00002.safetensors"
DISK_FILE = "model-00002-of-00002.safetensors"
COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
          "special_tokens_map.json")


def pinned_map(n_layers: int, on_disk: range) -> dict[str, str]:
    """The device map: every module in RAM but the decoder layers in ``on_disk``."""
    mapping = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    for i in range(n_layers):
        mapping[f"model.layers.{i}"] = "disk" if i in on_disk else "cpu"
    return mapping


def split_folder(source: Path, out: Path, on_disk: range) -> Path:
    """A copy of the HF folder ``source`` whose weights are two shards: RAM's and the disk layers';
    the disk shard's path."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    disk_prefixes = tuple(f"model.layers.{i}." for i in on_disk)
    shards: dict[str, dict[str, Any]] = {RESIDENT_FILE: {}, DISK_FILE: {}}
    with safe_open(str(source / "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            shards[DISK_FILE if name.startswith(disk_prefixes) else RESIDENT_FILE][name] = f.get_tensor(name)
    weight_map = {}
    for file, tensors in shards.items():
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in tensors})
    size = sum((out / file).stat().st_size for file in shards)
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}), encoding="utf-8")
    return out / DISK_FILE


def read_bytes() -> int:
    """What this process has made the block layer read so far (Linux; 0 where unknown)."""
    try:
        with open("/proc/self/io", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def drop_file_pages(path: Path) -> None:
    """Ask the kernel to forget ``path``'s cached pages (that one file only)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class RealReads:
    """Forward hooks on the target: time each forward, count the bytes it read, and drop the disk
    shard's pages after it so that the next forward reads them again."""

    def __init__(self, model: Any, disk_file: Path) -> None:
        self.disk_file = disk_file
        self.forwards: list[tuple[int, float, int]] = []  # (tokens, seconds, bytes read)
        self._start: tuple[float, int] | None = None
        self._handles = [model.register_forward_pre_hook(self._before, with_kwargs=True),
                         model.register_forward_hook(self._after, with_kwargs=True)]

    def _before(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self._start = (time.perf_counter(), read_bytes())

    def _after(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if self._start is None:
            return
        ids = kwargs.get("input_ids")
        n = int(ids.shape[-1]) if ids is not None else 0
        started, before = self._start
        self.forwards.append((n, time.perf_counter() - started, read_bytes() - before))
        self._start = None
        drop_file_pages(self.disk_file)

    def take(self) -> list[tuple[int, float, int]]:
        taken, self.forwards = self.forwards, []
        return taken

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextmanager
def offloaded_backend(*, threads: int, draft_quant: str | None, work: Path | None = None) -> Iterator[tuple[Any, RealReads, dict[str, Any]]]:
    """The split SmolLM2 loaded with two thirds of its layers on disk and a resident draft; the
    real-reads hooks; what was set up. Everything written is removed afterwards."""
    from app.runtime import library
    from app.runtime.backends.torch import TorchBackend
    from app.runtime.hf_folder import hf_folder_for_gguf
    from app.paths import paths

    source = hf_folder_for_gguf(library.embedded_model_path())
    n_layers = int(json.loads((source / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"])
    on_disk = range(round(n_layers * RESIDENT_SHARE), n_layers)
    root = work or paths().cache
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="spec-offload-", dir=root))  # on the disk, not a tmpfs /tmp
    backend = hooks = None
    try:
        disk_file = split_folder(source, scratch / "target", on_disk)
        settings = {"dtype": "float32", "n_ctx": 2048, "threads": threads, "device_map": pinned_map(n_layers, on_disk),
                    "offload_folder": str(scratch / "offload"), "speculate": "on", "draft": str(source), "draft_quant": draft_quant}
        backend = TorchBackend(scratch / "target", settings)
        hooks = RealReads(backend._model, disk_file)
        drop_file_pages(disk_file)
        layers = {"cpu": n_layers - len(on_disk), "disk": len(on_disk)}
        yield backend, hooks, {"layers": layers, "disk_file_bytes": disk_file.stat().st_size, "draft": backend.spec.reason,
                               "settings": {k: v for k, v in settings.items() if k != "device_map"}}
    finally:
        if hooks is not None:
            hooks.close()
        if backend is not None:
            backend.close()
        shutil.rmtree(scratch, ignore_errors=True)


def offload_case(pairs: int = 5, max_tokens: int = 64, *, threads: int | None = None, draft_quant: str | None = None,
                 work: Path | None = None) -> dict[str, Any]:
    """Speculation off and on in ``pairs`` interleaved pairs; tokens/s, speed-up (median), accepted
    tokens per step, whether the greedy outputs were identical, and how the reads were made real."""
    import torch

    from app.runtime.protocol import Sampling

    threads = threads or max(1, min(os.cpu_count() or 1, torch.get_num_threads()))
    sampling = Sampling(temperature=0.0, repeat_penalty=1.1, max_tokens=max_tokens)
    messages = [{"role": "user", "content": PROMPT}]
    with offloaded_backend(threads=threads, draft_quant=draft_quant, work=work) as (backend, hooks, setup):
        if backend.spec.draft is None:
            return {"missing": f"no draft: {backend.spec.reason}", **setup}
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for pair in range(max(pairs, 1)):
            for mode in (("off", "on") if pair % 2 == 0 else ("on", "off")):
                backend._new_cache()  # every run evaluates its prompt: the same work each time
                backend.spec.draft.reset()
                hooks.take()
                done = backend.chat(messages, sampling, on_token=lambda _: None, is_cancelled=lambda: False, speculate=mode)
                forwards = hooks.take()
                decode = [f for f in forwards[1:]]  # the first forward is the prompt's
                runs[mode].append({"tokens_per_s": round(done.decode_tps, 3), "tokens": done.completion_tokens, "text": done.text,
                                   "decode_seconds": round(done.decode_seconds, 3), "speculation": done.speculation,
                                   "forwards": len(decode), "forward_tokens": [f[0] for f in decode],
                                   "forward_seconds": [round(f[1], 4) for f in decode], "forward_read_bytes": [f[2] for f in decode]})
                log.info("offload case, pair %d, speculation %s: %.2f tok/s", pair, mode, done.decode_tps)
    return _report(runs, setup, max_tokens)


def _report(runs: dict[str, list[dict[str, Any]]], setup: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    off, on = runs["off"], runs["on"]
    ratios = [b["tokens_per_s"] / a["tokens_per_s"] for a, b in zip(off, on) if a["tokens_per_s"] > 0]
    steps = sum((r["speculation"] or {}).get("steps", 0) for r in on)
    accepted = sum((r["speculation"] or {}).get("accepted", 0) for r in on)
    one = [s for r in off for n, s in zip(r["forward_tokens"], r["forward_seconds"]) if n == 1]
    tree = [s for r in on for n, s in zip(r["forward_tokens"], r["forward_seconds"]) if n > 1]
    tree_sizes = [n for r in on for n in r["forward_tokens"] if n > 1]
    reads_off = [b for r in off for b in r["forward_read_bytes"]]
    reads_on = [b for r in on for b in r["forward_read_bytes"]]
    report: dict[str, Any] = {
        **setup,
        "pairs": len(ratios),
        "max_tokens": max_tokens,
        "tokens_per_s": {"off": [r["tokens_per_s"] for r in off], "on": [r["tokens_per_s"] for r in on],
                         "off_median": _median([r["tokens_per_s"] for r in off]), "on_median": _median([r["tokens_per_s"] for r in on])},
        "speedup": {"median": _median(ratios), "pairs": [round(x, 3) for x in ratios]},
        "accepted_per_step": round(accepted / steps, 3) if steps else None,
        "tokens_per_step": round((accepted + steps) / steps, 3) if steps else None,
        "greedy_identical": all(a["text"] == b["text"] for a, b in zip(off, on)),
        "reads": {
            "method": "posix_fadvise(POSIX_FADV_DONTNEED) on the disk shard after every target forward; read_bytes from /proc/self/io",
            "disk_file_bytes": setup["disk_file_bytes"],
            "read_bytes_per_forward_off": _median(reads_off),
            "read_bytes_per_forward_on": _median(reads_on),
        },
        "verify_cost": {"one_token_s": _median(one), "tree_s": _median(tree), "tree_tokens": _median(tree_sizes),
                        "relative": round(_median(tree) / _median(one), 3) if one and tree else None},
        "last_speculation": on[-1]["speculation"] if on else None,
    }
    if one and tree and steps:
        # the cost model: tokens per step over (a tree forward + the draft's work) in units of one token's forward
        seconds_on = sum(r["decode_seconds"] for r in on)
        verify_s = sum(sum(s for n, s in zip(r["forward_tokens"], r["forward_seconds"])) for r in on)
        draft_per_step = max(seconds_on - verify_s, 0.0) / steps
        predicted = ((accepted + steps) / steps) / (_median(tree) / _median(one) + draft_per_step / _median(one))
        report["predicted_speedup"] = {"median": round(predicted, 3), "draft_seconds_per_step": round(draft_per_step, 4)}
        if ratios:
            report["measured_over_predicted"] = round(_median(ratios) / predicted, 3)
    return report


def _median(values: list[float] | list[int]) -> float:
    return round(float(statistics.median(values)), 4) if values else 0.0
