"""Allow ``python -m llama_exporter``."""

from llama_exporter.cli import main

raise SystemExit(main())
