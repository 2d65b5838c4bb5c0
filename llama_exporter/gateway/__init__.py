"""The inference gateway: one OpenAI-compatible endpoint that loads models on demand.

Entry point: ``Gateway`` (routes.py). Pure policy lives in policy.py and sse.py; the
scheduler (queue, eviction, idle unload) in scheduler.py; forwarding in proxy.py;
request metrics in metrics.py.
"""

from llama_exporter.gateway.routes import Gateway

__all__ = ["Gateway"]
