"""What models need in memory, per device: estimated from the GGUF header, learned from
llama-server's own load report, budgeted and admitted. Entry point: admission (pure policy)."""
