"""The operator page: static files served by the service at / and /ui/... (see add_routes)."""

from llama_exporter.web.static_routes import add_routes

__all__ = ["add_routes"]
