"""``python -m dgstudy ...``: the ``dgstudy`` command line."""
import sys

from .cli import main

sys.exit(main())
