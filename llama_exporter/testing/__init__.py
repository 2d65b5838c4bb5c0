"""Test doubles shipped with the package: a fake llama-server and a tiny GGUF writer."""
