"""``python -m waveflow``: the ``waveflow`` command."""

from waveflow.cli.main import main

raise SystemExit(main())
