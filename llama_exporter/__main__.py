"""Allow ``python -m llama_exporter``."""

from llama_exporter.cli.main import main

raise SystemExit(main())
