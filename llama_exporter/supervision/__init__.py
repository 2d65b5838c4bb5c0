"""llama-server children: spawn, cap, restart, stop, reap. Entry point: supervisor.Supervisor."""
