"""``python -m ncstudy.cli``: the same as the ``ncstudy`` command."""
import sys

from ncstudy.cli import main

sys.exit(main())
