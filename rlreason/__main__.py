import sys

from rlreason.cli import main

sys.exit(main())
