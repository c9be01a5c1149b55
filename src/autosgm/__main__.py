"""``python -m autosgm`` runs the ``autosgm`` command (see :mod:`autosgm.cli`)."""

from autosgm.cli import main

raise SystemExit(main())
