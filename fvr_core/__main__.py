import sys

from fvr_core.cli import main

sys.exit(main())
