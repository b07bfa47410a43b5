"""``python -m ctxlab.casestudy``: see :mod:`ctxlab.casestudy.cli`."""
from .cli import main

main()
