"""`python -m polo_lib.cli`: the same as `polo`."""
import sys

from .parser import main

sys.exit(main())
