"""What Prometheus reads: exported families, the collector, /metrics text, scrape targets.

Entry point: collector.
"""
