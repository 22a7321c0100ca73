"""The KV bench's PNG: four panels drawn with matplotlib's Agg backend (no Qt in the runtime)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_png(report: dict[str, Any], path: Path) -> str | None:
    """Draw ``report`` to ``path`` (temp name + rename); None when written, else why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import ScalarFormatter
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install matplotlib)"

    within = report["within_trained_context"]
    beyond = report["beyond_trained_context"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))

    ax = axes[0][0]
    fractions = [b["fraction"] * 100 for b in within["budgets"].values()]
    for name, by_budget in within["policies"].items():
        ax.plot(fractions, list(by_budget.values()), marker="o", label=name)
    ax.axhline(within["full"], color="black", linestyle="--", label="full")
    window = within["plain_window_no_sinks"]
    ax.scatter([25], [window["ppl"]], color="red", marker="x", label="window, no sinks")
    ax.set(xlabel="budget (% of evaluated length)", ylabel="perplexity",
           title=f"Within the trained context: {within['length']} tokens, chunks of {within['chunk']}")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.legend(fontsize=8)

    ax = axes[0][1]
    starts = beyond["bucket_starts"]
    for name, values in beyond["ppl_per_bucket"].items():
        ax.plot(starts, values, marker=".", label=name, color="black" if name == "full" else None)
    ax.axvline(8192, color="grey", linestyle=":", label="trained context")
    ax.set(xlabel="token position (bucket start)", ylabel="perplexity per bucket",
           title=f"Beyond the trained context: budget {beyond['budget_tokens']} tokens")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.legend(fontsize=8)

    speed = report.get("memory_and_speed")
    if speed:
        for ax, field, label in ((axes[1][0], "kv_mib", "KV cache (MiB)"), (axes[1][1], "decode_tok_s", "decode tokens/s")):
            for name, rows in speed["policies"].items():
                ax.plot([r["context"] for r in rows], [r[field] for r in rows], marker="o", label=name)
            ax.set(xlabel="context (tokens)", ylabel=label, title=f"{label}, budget {speed['budget_tokens']} tokens")
            ax.legend(fontsize=8)
    else:
        for ax in axes[1]:
            ax.set_axis_off()

    fig.suptitle(f"hearth bench kv — {report.get('model', '')}, {report.get('dtype', '')}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    except OSError as exc:
        log.exception("could not write the KV bench plot to %s", path)
        return f"plot not written: {exc}"
    finally:
        plt.close(fig)
    return None
