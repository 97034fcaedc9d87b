"""``python -m mediator``: the same as the ``mediator`` command."""

from mediator._operations.cli import main

raise SystemExit(main())
