"""llama-exporter: run llama.cpp models on demand and watch them with Prometheus."""

__version__ = "0.1.0"
