"""`python -m genllava` (and `accelerate launch -m genllava`): the `genllava` command."""

import sys

from .cli import main

sys.exit(main())
