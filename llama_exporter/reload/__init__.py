"""Config reload: the plan (pure), the applier, its triggers; entry point apply.Reloader."""
