"""``python -m mediator``: the same as the ``mediator`` command."""

from mediator._cli import main

raise SystemExit(main())
