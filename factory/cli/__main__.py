"""`python -m factory.cli ...` (tests, Ray jobs) is the `adfactory` command."""

import sys

from factory.cli.app import main

sys.exit(main())
