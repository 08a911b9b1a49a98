"""``python -m icm_app``: the ``icm`` command without the installed console script."""

import sys

from icm_app.main import main

sys.exit(main())
