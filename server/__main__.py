"""`python -m server` runs dgasr-server."""

import sys

from .app import main

sys.exit(main())
