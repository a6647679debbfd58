import sys

from atrous.cli import main

sys.exit(main())
