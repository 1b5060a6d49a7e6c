import sys

from localdpo.cli import main

sys.exit(main())
