"""The memory panels (issue 18): a row on the overview (each device's budget and what is
reserved, each model's figure before and after a load, each llama-server's memory split)
and a row on the model dashboard."""

from __future__ import annotations

from panels import Json, Layout, row, target, timeseries

ROW = "Memory"
P = "llama_exporter_"
HOST_MODEL = "{{host}} {{model}}"


def overview_row(lay: Layout, h: str) -> list[Json]:
    """Budgets, reservations and figures on every host; h selects the hosts."""
    size = (8, 8)
    return [
        row(lay, ROW),
        timeseries(lay, "Memory reserved / budget", "Memory reserved by instances holding a "
                   "place (their admitted figures) against each device's memory_budget.",
                   "bytes",
                   [target(f"sum by (host, device) ({P}memory_reserved_bytes{h})",
                           "{{host}} {{device}} reserved"),
                    target(f"sum by (host, device) ({P}memory_budget_bytes{h})",
                           "{{host}} {{device}} budget")], size=size, stepped=True),
        timeseries(lay, "Budget reserved", "Share of each device's budget reserved now; "
                   "at 95 % for 10 minutes LlamaMemoryBudgetFull fires.", "percentunit",
                   [target(f"sum by (host, device) ({P}memory_reserved_bytes{h}) / "
                           f"sum by (host, device) ({P}memory_budget_bytes{h})",
                           "{{host}} {{device}}")], size=size, stepped=True, maximum=1),
        timeseries(lay, "Reported / estimated", "What each model's last load reported "
                   "against the estimate made before it (1 = exact); above 1.1 "
                   "LlamaMemoryAboveEstimate fires.", "none",
                   [target(f"sum by (host, model) ({P}model_memory_reported_bytes{h}) / "
                           f"sum by (host, model) ({P}model_memory_estimated_bytes{h})",
                           HOST_MODEL)], size=size),
        timeseries(lay, "Estimated memory", "Each known model's figure before a load, all "
                   "devices together (what admission reserves until a load teaches it).",
                   "bytes",
                   [target(f"sum by (host, model) ({P}model_memory_estimated_bytes{h})",
                           HOST_MODEL)], size=size, stepped=True),
        timeseries(lay, "Reported memory by kind", "What each model's last load allocated: "
                   "weights, KV cache and compute buffers (llama-server's own figures).",
                   "bytes",
                   [target(f"sum by (host, model, kind) ({P}model_memory_reported_bytes{h})",
                           "{{host}} {{model}} {{kind}}")], size=size, stepped=True),
        timeseries(lay, "Process memory: anonymous / file", "Each llama-server's resident "
                   "memory: anonymous (KV cache, buffers) and file-backed (the GGUF's mapped "
                   "pages, shared by instances of one file).", "bytes",
                   [target(f"max by (host, model) ({P}process_resident_memory_anonymous_bytes"
                           f"{h})", "{{host}} {{model}} anonymous"),
                    target(f"max by (host, model) ({P}process_resident_memory_file_bytes{h})",
                           "{{host}} {{model}} file")], size=size),
    ]  # fmt: skip


def model_row(lay: Layout, m: str) -> list[Json]:
    """One model's figures and its process's memory; m is its label selector."""
    return [
        row(lay, ROW),
        timeseries(lay, "Memory figure", "The model's estimate before a load, and what its "
                   "last load reported, per device.", "bytes",
                   [target(f"sum by (device) ({P}model_memory_estimated_bytes{m})",
                           "estimated {{device}}"),
                    target(f"sum by (device) ({P}model_memory_reported_bytes{m})",
                           "reported {{device}}")], stepped=True),
        timeseries(lay, "Process memory: anonymous / file", "The llama-server's resident "
                   "memory: anonymous (KV cache, buffers) and file-backed (the mapped GGUF).",
                   "bytes",
                   [target(f"max({P}process_resident_memory_anonymous_bytes{m})", "anonymous"),
                    target(f"max({P}process_resident_memory_file_bytes{m})", "file")]),
    ]  # fmt: skip
