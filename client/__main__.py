"""``python -m client``: the same as the ``dgasr-client`` command."""

import sys

from .cli import main

sys.exit(main())
