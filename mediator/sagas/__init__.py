"""Sagas: a business operation over several services as a sequence of steps,
each with an action and a compensation, recorded step by step so that a
stopped process resumes where it was (docs/sagas.md).

```python
from mediator.sagas import MemorySagaStore, Saga, SagaRunner, Step
```

`SqlSagaStore` (the ``outbox`` extra) keeps them beside the outbox, so
that a step's recorded outcome commits with what the step wrote and sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mediator.sagas._model import Saga as Saga
from mediator.sagas._model import SagaConflictError as SagaConflictError
from mediator.sagas._model import SagaError as SagaError
from mediator.sagas._model import SagaState as SagaState
from mediator.sagas._model import SagaStatus as SagaStatus
from mediator.sagas._model import Step as Step
from mediator.sagas._runner import SagaResult as SagaResult
from mediator.sagas._runner import SagaRunner as SagaRunner
from mediator.sagas._stores import MemorySagaStore as MemorySagaStore
from mediator.sagas._stores import SagaStore as SagaStore

if TYPE_CHECKING:
    from mediator.sagas._sql import SqlSagaStore as SqlSagaStore

__all__ = [
    "MemorySagaStore",
    "Saga",
    "SagaConflictError",
    "SagaError",
    "SagaResult",
    "SagaRunner",
    "SagaState",
    "SagaStatus",
    "SagaStore",
    "SqlSagaStore",
    "Step",
]


def __getattr__(name: str) -> Any:
    if name == "SqlSagaStore":
        try:
            from mediator.sagas._sql import SqlSagaStore
        except ImportError as exc:
            raise ImportError(
                f"mediator.sagas.SqlSagaStore needs SQLAlchemy ({exc}): "
                "pip install 'mediator-toolkit[outbox]'"
            ) from exc
        return SqlSagaStore
    raise AttributeError(f"module 'mediator.sagas' has no attribute {name!r}")
