import sys

from transparent_md.cli.main import main

sys.exit(main())
