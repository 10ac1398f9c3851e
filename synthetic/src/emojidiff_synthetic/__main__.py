"""`python -m emojidiff_synthetic demo`: the same as the `emojidiff-synthetic` command."""

import sys

from .demo import main

sys.exit(main())
