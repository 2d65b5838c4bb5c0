"""The llama-exporter command line. Entry point: main.main."""
