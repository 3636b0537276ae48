"""``python -m redis_logstream.cli``: the ``redis-logstream`` command."""

import sys

from redis_logstream.cli.entry import main

sys.exit(main())
