"""The inference gateway: one OpenAI-compatible endpoint that loads models on demand.

Entry point: ``Gateway`` (routes.py). Pure policy lives in policy.py and sse.py;
admission in scheduler.py, with the queue for the cap in waitqueue.py, eviction and
idle unload in unload.py and the counts of use in usage.py; forwarding in proxy.py;
request metrics in metrics.py.
"""
