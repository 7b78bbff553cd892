"""Allow ``python -m ecomarine``."""

import sys

from .cli import main

sys.exit(main())
