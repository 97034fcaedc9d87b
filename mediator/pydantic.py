"""Event kinds as pydantic v2 models (the ``pydantic`` extra).

```python
from mediator.pydantic import NotificationEvent


class UserJoined(NotificationEvent, name="user.joined"):
    user_id: int
```

Each class here is a `pydantic.BaseModel` and a subclass of the kind of the
same name in `mediator`, so a model event is bound, emitted, published and
consumed like any other: ``isinstance(event, mediator.NotificationEvent)``
holds. The models are frozen; `event_id` and `event_timestamp` default as
the attrs kinds' do. Decoding validates with pydantic itself, strictly
(``"5"`` is not an int) unless the model's ``model_config`` sets ``strict``.
Requests need no base of their own: a model subclassing
``mediator.Request[Res]`` (or none) is sent like any object.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from typing import Any

try:
    import pydantic
    from pydantic._internal._model_construction import ModelMetaclass
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "mediator.pydantic needs pydantic v2: pip install 'mediator-toolkit[pydantic]'"
    ) from exc

from mediator import _events

__all__ = ["DomainEvent", "ECSTEvent", "Event", "NotificationEvent"]


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


class _ModelEventType(ModelMetaclass, _events.EventType):
    """pydantic's metaclass and the event kinds' in one."""


class Event(pydantic.BaseModel, _events.Event, metaclass=_ModelEventType):
    """Base of every pydantic event: `event_id` and `event_timestamp`, frozen."""

    model_config = pydantic.ConfigDict(frozen=True)

    event_id: uuid.UUID = pydantic.Field(default_factory=uuid.uuid4)
    event_timestamp: _dt.datetime = pydantic.Field(default_factory=_now)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # pydantic hands the class keywords it does not know (name=,
        # partition_key=) on to here, as `type` does.
        super().__init_subclass__(**kwargs)


class DomainEvent(Event, _events.DomainEvent):
    """An event handled inside the process, as a pydantic model."""


class NotificationEvent(Event, _events.NotificationEvent):
    """An event published to the broker, as a pydantic model."""


class ECSTEvent(Event, _events.ECSTEvent):
    """Event-carried state transfer, as a pydantic model."""
