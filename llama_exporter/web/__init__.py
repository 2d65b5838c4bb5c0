"""The operator page: static files served by the service at / and /ui/... (see add_routes)."""
