"""``python -m cachegate`` is the ``cachegate`` command."""

from cachegate.cli import main

raise SystemExit(main())
