import sys

from contrl.cli import main

sys.exit(main())
