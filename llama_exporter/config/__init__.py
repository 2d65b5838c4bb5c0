"""Configuration: frozen settings (settings.py) at the bottom; load_config (loader.py) on top."""
