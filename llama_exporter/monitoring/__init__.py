"""Reading the instances: 1 Hz polls of /slots and /metrics into snapshots.

Entry point: poller.Poller.
"""
