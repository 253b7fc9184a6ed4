"""``python -m waveflow``: the ``waveflow`` command."""

from waveflow.cli import main

raise SystemExit(main())
