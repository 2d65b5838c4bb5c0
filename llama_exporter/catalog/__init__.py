"""The models we know: config, discovered GGUF files, API-registered.

Entry point: registry.Registry.
"""
