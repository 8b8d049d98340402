import sys

from p2pcompute.cli import main

sys.exit(main())
