"""Sagas: a business operation over several services as a sequence of steps,
each with an action and a compensation, recorded step by step so that a
stopped process resumes where it was; and process managers, which react to
events correlated by a key, with timeouts delivered across restarts
(docs/sagas.md).

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
from mediator.sagas._process import Process as Process
from mediator.sagas._process import ProcessManager as ProcessManager
from mediator.sagas._process import TimeoutDispatcher as TimeoutDispatcher
from mediator.sagas._process import handles as handles
from mediator.sagas._process_stores import MemoryProcessStore as MemoryProcessStore
from mediator.sagas._process_stores import ProcessStore as ProcessStore
from mediator.sagas._runner import SagaResult as SagaResult
from mediator.sagas._runner import SagaRunner as SagaRunner
from mediator.sagas._stores import MemorySagaStore as MemorySagaStore
from mediator.sagas._stores import SagaStore as SagaStore

if TYPE_CHECKING:
    from mediator.sagas._process_sql import SqlProcessStore as SqlProcessStore
    from mediator.sagas._sql import SqlSagaStore as SqlSagaStore

__all__ = [
    "MemoryProcessStore",
    "MemorySagaStore",
    "Process",
    "ProcessManager",
    "ProcessStore",
    "Saga",
    "SagaConflictError",
    "SagaError",
    "SagaResult",
    "SagaRunner",
    "SagaState",
    "SagaStatus",
    "SagaStore",
    "SqlProcessStore",
    "SqlSagaStore",
    "Step",
    "TimeoutDispatcher",
    "handles",
]


def __getattr__(name: str) -> Any:
    if name in ("SqlSagaStore", "SqlProcessStore"):
        try:
            from mediator.sagas._process_sql import SqlProcessStore
            from mediator.sagas._sql import SqlSagaStore
        except ImportError as exc:
            raise ImportError(
                f"mediator.sagas.{name} needs SQLAlchemy ({exc}): "
                "pip install 'mediator-toolkit[outbox]'"
            ) from exc
        return SqlSagaStore if name == "SqlSagaStore" else SqlProcessStore
    raise AttributeError(f"module 'mediator.sagas' has no attribute {name!r}")
