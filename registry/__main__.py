"""``python -m model_registry``: the composition root. Nothing in the domain
imports this module, so the package itself depends on ``storage`` only."""

from .api.cli import main

main()
