"""What the engine calls: a reply's ``speculate`` mode to the drafter the token loop is given.

``auto`` and ``lookup`` give prompt lookup under the adaptive k (the planner, at the reply's start,
turns it off where the measured verify cost says guessing cannot pay: ``auto`` only); ``off``
gives none; ``draft:MODEL`` a draft model from the library, checked to share the target's
vocabulary (refused with the reason otherwise), loaded when memory allows and placed by the
planner (`planner.speculation.place_draft`), and kept loaded between replies. `Speculators` is
owned by the engine, which closes it with the model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psutil

from app.runtime import library
from app.runtime.library import ModelInfo
from app.runtime.measurements import MeasurementStore
from app.runtime.planner import speculation as plan
from app.runtime.protocol import ErrorKind, RuntimeFailure
from app.runtime.spec.adaptive import AdaptiveDrafter
from app.runtime.spec.lookup import PromptLookup

log = logging.getLogger(__name__)

RAM_MARGIN = 512 * 2**20  # left free for everything else after a draft model loads


class OffDrafter:
    """A drafter that says, at the reply's start, why it does not guess (no draft model fits, say)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def begin(self, kv: Any) -> dict[str, Any]:
        return {"on": False, "drafter": None, "reason": self.reason}

    def propose(self, tokens: Sequence[int], limit: int) -> list[int]:
        return []

    def observe(self, proposed: int, accepted: int) -> None:
        pass


def check_mode(mode: str | None) -> tuple[str, str | None]:
    try:
        return plan.parse_mode(mode)
    except ValueError as exc:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, str(exc)) from exc


class Speculators:
    """The engine's speculation state: the loaded draft model (one at a time) and vocabulary checks."""

    def __init__(self, store: MeasurementStore | None) -> None:
        self.store = store
        self._draft: Any = None  # DraftModel
        self._vocab: dict[str, dict[str, Any]] = {}

    def drafter(self, mode: str | None, *, backend: str, target: ModelInfo, target_plan: Any = None,
                models: Sequence[ModelInfo] = (), n_ctx: int = 2048, threads: int | None = None,
                attached: Sequence[int] = ()) -> Any:
        """The drafter for one reply, or None (off, or a backend without this loop)."""
        kind, name = check_mode(mode)
        if kind == "off" or backend != "llama.cpp":
            return None
        if kind != "draft":
            return AdaptiveDrafter(PromptLookup(attached), mode=kind, kind="lookup", store=self.store)
        assert name is not None
        draft_info = library.resolve(name, list(models))
        return self._draft_drafter(draft_info, target, target_plan, n_ctx=n_ctx, threads=threads)

    def _draft_drafter(self, draft_info: ModelInfo, target: ModelInfo, target_plan: Any, *, n_ctx: int, threads: int | None) -> Any:
        from app.runtime.spec.draft_model import DraftModel

        if draft_info.format != "gguf":
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{draft_info.name} cannot be a draft model: the llama.cpp backend needs a GGUF file.")
        mismatch = self.vocabulary_mismatch(target, draft_info)
        if mismatch:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS,
                                 f"{draft_info.name} cannot draft for {target.name}: {mismatch}. A draft model must share the model's vocabulary "
                                 "(a smaller model of the same family).")
        placement = plan.place_draft(target_plan, draft_info.file_size) if target_plan is not None else plan.DraftPlacement("cpu", 0, None, "no plan")
        ctx = n_ctx + plan.K_MAX + 2
        settings = (str(draft_info.path), ctx, placement.n_gpu_layers, threads)
        current = self._draft
        if current is None or current.settings[:3] != settings[:3]:
            self.close()
            if placement.device == "none":
                return OffDrafter(f"the draft model {draft_info.name} does not fit: {placement.reason}")
            free = psutil.virtual_memory().available
            if placement.device == "cpu" and free < draft_info.file_size + RAM_MARGIN:
                return OffDrafter(f"the draft model {draft_info.name} needs {draft_info.file_size / 2**20:.0f} MiB and "
                                  f"{free / 2**20:.0f} MiB of RAM is free")
            self._draft = current = DraftModel(draft_info.path, n_ctx=ctx, n_gpu_layers=placement.n_gpu_layers, n_threads=threads)
            log.info("draft model %s loaded in %.2f s (%s)", draft_info.name, current.load_seconds, placement.reason)
        draft = current

        def relative_cost(me: AdaptiveDrafter) -> float:
            """A draft token over a target token, both measured on this machine."""
            one = me.curve.seconds[1] if me.curve is not None else None
            return draft.cost_per_token() / one if one else 1.0

        return AdaptiveDrafter(draft, mode=f"draft:{draft_info.id}", kind="draft", store=self.store, draft_cost=relative_cost,
                               report={"placement": placement.to_dict()})

    def vocabulary_mismatch(self, target: ModelInfo, draft: ModelInfo) -> str | None:
        from app.runtime.spec.draft_model import vocabulary, vocabulary_mismatch

        prints = []
        for info in (target, draft):
            if info.path not in self._vocab:
                try:
                    self._vocab[info.path] = vocabulary(info.path)
                except ValueError as exc:
                    return str(exc)
            prints.append(self._vocab[info.path])
        return vocabulary_mismatch(prints[0], prints[1])

    def close(self) -> None:
        draft, self._draft = self._draft, None
        if draft is not None:
            draft.close()
