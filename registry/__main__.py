"""``python -m registry``: the composition root. Nothing in ``registry`` imports this
module, so the package itself still depends on ``storage`` only."""

from api.cli import main

main()
