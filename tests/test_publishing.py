"""@publish_result and @publish_arguments: what they publish, when, and how
they refuse what they cannot do."""

from __future__ import annotations

import dataclasses
import inspect
import types
import uuid
from typing import Any

import attrs
import pytest

from brokers.memory import InMemoryMessageBroker
from mediator import (
    DomainEvent,
    EventEmitter,
    EventMap,
    ModelBuildError,
    NotificationEvent,
    publish_arguments,
    publish_result,
)


@attrs.frozen(kw_only=True)
class OrderCreated(NotificationEvent, name="order.created"):
    order_id: str
    customer_id: str
    items: list[str]
    status: str


@attrs.frozen(kw_only=True)
class OrderCompleted(NotificationEvent, name="order.completed"):
    order_id: str
    status: str


@attrs.frozen(kw_only=True)
class OrderCancelling(NotificationEvent, name="order.cancelling"):
    order_id: str
    reason: str


@attrs.frozen(kw_only=True)
class Refunded(NotificationEvent, name="order.refunded"):
    order_id: str
    amount: int
    result: str | None = None


@attrs.frozen(kw_only=True)
class Counted(NotificationEvent, name="counted"):
    result: int


@attrs.frozen(kw_only=True)
class StockReserved(DomainEvent):
    sku: str
    quantity: int


@attrs.frozen(kw_only=True)
class Customer:
    id: int
    email: str


@attrs.frozen(kw_only=True)
class CustomerRegistered(NotificationEvent, name="customer.registered"):
    customer: Customer
    source: str


def payloads(broker: InMemoryMessageBroker, name: str) -> list[dict[str, Any]]:
    """The payloads published under `name`, without the two fields every event has."""
    return [
        {k: v for k, v in m.payload.items() if k not in ("event_id", "event_timestamp")}
        for m in broker.messages
        if m.message_name == name
    ]


@pytest.fixture
def broker() -> InMemoryMessageBroker:
    return InMemoryMessageBroker()


@pytest.fixture
def emitter(broker: InMemoryMessageBroker) -> EventEmitter:
    return EventEmitter(event_map=EventMap(), message_broker=broker)


# The seed's OrderService, with typed events.


async def test_create_order_publishes_its_dict_result(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    class OrderService:
        @publish_result(emitter, OrderCreated)
        async def create_order(self, customer_id: str, items: list[str]) -> dict[str, Any]:
            return {
                "order_id": "o-1",
                "customer_id": customer_id,
                "items": items,
                "status": "CREATED",
            }

    result = await OrderService().create_order("c-9", ["book"])

    assert result == {
        "order_id": "o-1",
        "customer_id": "c-9",
        "items": ["book"],
        "status": "CREATED",
    }
    assert [m.message_type for m in broker.messages] == ["notification_event"]
    assert payloads(broker, "order.created") == [
        {"order_id": "o-1", "customer_id": "c-9", "items": ["book"], "status": "CREATED"}
    ]


async def test_complete_order_publishes_only_when_the_condition_holds(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    class OrderService:
        @publish_result(
            emitter, OrderCompleted, condition=lambda result: result["status"] == "COMPLETED"
        )
        async def complete_order(self, order_id: str, paid: bool) -> dict[str, str]:
            return {"order_id": order_id, "status": "COMPLETED" if paid else "PENDING"}

    service = OrderService()
    assert await service.complete_order("o-1", paid=False) == {
        "order_id": "o-1",
        "status": "PENDING",
    }
    assert list(broker.messages) == []

    assert await service.complete_order("o-2", paid=True) == {
        "order_id": "o-2",
        "status": "COMPLETED",
    }
    assert payloads(broker, "order.completed") == [{"order_id": "o-2", "status": "COMPLETED"}]


async def test_a_false_condition_builds_nothing(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    # The result could not build an OrderCompleted; skipped, it is never tried.
    @publish_result(emitter, OrderCompleted, condition=lambda result: result is not None)
    async def find_order() -> dict[str, str] | None:
        return None

    assert await find_order() is None
    assert list(broker.messages) == []


async def test_cancel_order_publishes_its_arguments_before_the_body_runs(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    seen_by_body: list[list[dict[str, Any]]] = []

    class OrderService:
        @publish_arguments(emitter, OrderCancelling, timing="before")
        async def cancel_order(self, order_id: str, reason: str) -> None:
            seen_by_body.append(payloads(broker, "order.cancelling"))

    await OrderService().cancel_order("o-1", reason="changed my mind")

    assert seen_by_body == [[{"order_id": "o-1", "reason": "changed my mind"}]]


async def test_before_is_the_default_timing(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    @publish_arguments(emitter, OrderCancelling)
    async def cancel_order(order_id: str, reason: str) -> int:
        assert len(broker.messages) == 1
        return 3

    assert await cancel_order("o-1", "late") == 3
    assert payloads(broker, "order.cancelling") == [{"order_id": "o-1", "reason": "late"}]


# Timings.


async def test_after_publishes_the_arguments_and_the_result_once_the_body_returns(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    @publish_arguments(emitter, Refunded, timing="after")
    async def refund(order_id: str, amount: int) -> str:
        assert list(broker.messages) == [], "published before the body ran"
        return "r-77"

    assert await refund("o-1", amount=250) == "r-77"
    assert payloads(broker, "order.refunded") == [
        {"order_id": "o-1", "amount": 250, "result": "r-77"}
    ]


async def test_both_publishes_before_without_the_result_and_after_with_it(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    during: list[int] = []

    @publish_arguments(emitter, Refunded, timing="both")
    async def refund(order_id: str, amount: int) -> str:
        during.append(len(broker.messages))
        return "r-78"

    await refund("o-2", 100)

    assert during == [1]
    assert payloads(broker, "order.refunded") == [
        {"order_id": "o-2", "amount": 100, "result": None},
        {"order_id": "o-2", "amount": 100, "result": "r-78"},
    ]


async def test_after_publishes_nothing_when_the_body_raises(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    @publish_arguments(emitter, Refunded, timing="after")
    async def refund(order_id: str, amount: int) -> str:
        raise RuntimeError("card declined")

    with pytest.raises(RuntimeError, match="card declined"):
        await refund("o-3", 5)
    assert list(broker.messages) == []


async def test_both_publishes_only_the_first_event_when_the_body_raises(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    @publish_arguments(emitter, Refunded, timing="both")
    async def refund(order_id: str, amount: int) -> str:
        raise RuntimeError("card declined")

    with pytest.raises(RuntimeError, match="card declined"):
        await refund("o-3", 5)
    assert payloads(broker, "order.refunded") == [{"order_id": "o-3", "amount": 5, "result": None}]


async def test_a_failed_publish_before_the_call_stops_the_body() -> None:
    events = EventMap()

    @events.bind(StockReserved)
    async def out_of_stock(event: StockReserved) -> None:
        raise LookupError(f"no {event.sku} left")

    ran: list[str] = []

    @publish_arguments(EventEmitter(event_map=events), StockReserved, timing="before")
    async def reserve(sku: str, quantity: int) -> None:
        ran.append(sku)

    with pytest.raises(LookupError, match="no sku-1 left"):
        await reserve("sku-1", 2)
    assert ran == []


async def test_both_refuses_a_result_field_without_a_default(emitter: EventEmitter) -> None:
    with pytest.raises(
        TypeError, match=r"publishes Counted before the call, .*give its result field a default"
    ):
        publish_arguments(emitter, Counted, timing="both")
    publish_arguments(emitter, Counted, timing="after")  # after alone has a result


# The payload of @publish_arguments.


async def test_arguments_the_event_does_not_declare_are_left_out(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    class Session:
        pass

    @publish_arguments(emitter, Refunded, timing="before")
    async def refund(session: Session, order_id: str, amount: int = 10, **extra: Any) -> None:
        pass

    await refund(Session(), "o-4", note="gift", result="r-1")

    # The default applies; session and note are not fields; **extra's
    # `result` is a field, so it counts.
    assert payloads(broker, "order.refunded") == [
        {"order_id": "o-4", "amount": 10, "result": "r-1"}
    ]


async def test_an_object_passed_for_a_model_field_is_read_by_attribute(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    class CustomerRow:  # an ORM row, say: not the Customer model
        def __init__(self) -> None:
            self.id = 5
            self.email = "ada@example.com"
            self.password_hash = "..."

    @publish_arguments(emitter, CustomerRegistered)
    async def register(customer: CustomerRow, source: str) -> None:
        pass

    await register(CustomerRow(), "web")

    [message] = broker.messages
    assert message.payload["customer"] == Customer(id=5, email="ada@example.com")
    assert message.payload["source"] == "web"


async def test_a_first_parameter_named_cls_is_left_out(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    @attrs.frozen(kw_only=True)
    class Named(NotificationEvent, name="named"):
        cls: str = "unset"
        order_id: str

    class Orders:
        @classmethod
        @publish_arguments(emitter, Named)
        async def touch(cls, order_id: str) -> None:
            pass

    await Orders.touch("o-5")

    assert payloads(broker, "named") == [{"cls": "unset", "order_id": "o-5"}]


# Methods and the wrapper.


async def test_a_decorated_method_keeps_its_name_signature_and_instance(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    class Inventory:
        def __init__(self, prefix: str) -> None:
            self.prefix = prefix

        @publish_result(emitter, OrderCompleted)
        async def close(self, order_id: str, *, status: str = "CLOSED") -> dict[str, str]:
            """Close the order."""
            return {"order_id": f"{self.prefix}{order_id}", "status": status}

    inventory = Inventory("eu-")
    assert await inventory.close("1") == {"order_id": "eu-1", "status": "CLOSED"}
    assert payloads(broker, "order.completed") == [{"order_id": "eu-1", "status": "CLOSED"}]

    assert Inventory.close.__name__ == "close"
    assert Inventory.close.__doc__ == "Close the order."
    assert str(inspect.signature(inventory.close)) == (
        "(order_id: 'str', *, status: 'str' = 'CLOSED') -> 'dict[str, str]'"
    )
    assert inspect.iscoroutinefunction(inventory.close)


def test_publish_arguments_keeps_the_name_and_signature(emitter: EventEmitter) -> None:
    @publish_arguments(emitter, OrderCancelling)
    async def cancel_order(order_id: str, reason: str = "none") -> None:
        """Cancel it."""

    assert cancel_order.__name__ == "cancel_order"
    assert cancel_order.__doc__ == "Cancel it."
    assert str(inspect.signature(cancel_order)) == (
        "(order_id: 'str', reason: 'str' = 'none') -> 'None'"
    )


# How @publish_result reads the result.


async def test_a_result_that_is_the_event_is_emitted_as_it_is(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    made: list[OrderCompleted] = []

    @publish_result(emitter, OrderCompleted)
    async def complete(order_id: str) -> OrderCompleted:
        made.append(OrderCompleted(order_id=order_id, status="COMPLETED"))
        return made[-1]

    assert await complete("o-6") is made[0]
    [message] = broker.messages
    assert message.message_id == made[0].event_id
    assert message.payload["event_timestamp"] == made[0].event_timestamp


async def test_a_result_that_is_no_mapping_is_the_result_field(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    @publish_result(emitter, Counted)
    async def count() -> int:
        return 42

    assert await count() == 42
    assert payloads(broker, "counted") == [{"result": 42}]


async def test_any_mapping_gives_the_fields_and_unknown_keys_are_ignored(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    @publish_result(emitter, OrderCompleted)
    async def complete() -> types.MappingProxyType[str, str]:
        return types.MappingProxyType({"order_id": "o-7", "status": "DONE", "note": "x"})

    await complete()
    assert payloads(broker, "order.completed") == [{"order_id": "o-7", "status": "DONE"}]


async def test_a_domain_event_reaches_the_local_handler_bound_in_the_event_map(
    broker: InMemoryMessageBroker,
) -> None:
    events = EventMap()
    reserved: list[tuple[str, int]] = []

    @events.bind(StockReserved)
    async def on_reserved(event: StockReserved) -> None:
        reserved.append((event.sku, event.quantity))

    emitter = EventEmitter(event_map=events, message_broker=broker)

    @publish_result(emitter, StockReserved)
    async def reserve(sku: str) -> dict[str, Any]:
        return {"sku": sku, "quantity": 3}

    await reserve("sku-2")

    assert reserved == [("sku-2", 3)]
    assert list(broker.messages) == [], "a DomainEvent is not published"


# Refused at decoration.


def test_a_sync_function_is_refused(emitter: EventEmitter) -> None:
    def create_order() -> dict[str, str]:
        return {}

    with pytest.raises(TypeError, match=r"decorates async functions; create_order is not one"):
        publish_result(emitter, OrderCreated)(create_order)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"@publish_arguments decorates async functions"):
        publish_arguments(emitter, OrderCreated)(create_order)  # type: ignore[arg-type]


def test_a_decorator_above_staticmethod_is_refused(emitter: EventEmitter) -> None:
    async def create_order() -> None:
        pass

    with pytest.raises(TypeError, match=r"put it below @staticmethod"):
        publish_result(emitter, Counted)(staticmethod(create_order))


def test_an_emitter_without_emit_is_refused() -> None:
    broker = InMemoryMessageBroker()
    with pytest.raises(
        TypeError,
        match=r"@publish_result needs an emitter .* such as mediator\.EventEmitter"
        r"\(message_broker=\.\.\.\); got an instance of InMemoryMessageBroker",
    ):
        publish_result(broker, OrderCreated)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"@publish_arguments needs an emitter"):
        publish_arguments(object(), OrderCreated)  # type: ignore[arg-type]


def test_a_condition_that_is_not_callable_is_refused(emitter: EventEmitter) -> None:
    with pytest.raises(TypeError, match=r"condition=\.\.\.\) got an instance of str"):
        publish_result(emitter, OrderCompleted, condition="COMPLETED")  # type: ignore[arg-type]


async def test_an_emit_that_returns_no_awaitable_is_refused_when_called() -> None:
    emitted: list[object] = []

    class SyncEmitter:
        def emit(self, event: object) -> None:
            emitted.append(event)

    @publish_result(SyncEmitter(), Counted)  # type: ignore[arg-type]
    async def count() -> int:
        return 1

    with pytest.raises(TypeError, match=r"emit\(event\) returned an instance of NoneType"):
        await count()


def test_an_unknown_timing_is_refused_naming_the_allowed_ones(emitter: EventEmitter) -> None:
    with pytest.raises(ValueError, match=r"must be one of 'before', 'after', 'both'; got 'BEFORE'"):
        publish_arguments(emitter, OrderCancelling, timing="BEFORE")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "not_an_event",
    [
        Customer,
        dict,
        "order.created",
        OrderCreated(order_id="o", customer_id="c", items=[], status="s"),
    ],
)
def test_an_event_type_that_is_no_event_class_is_refused(
    emitter: EventEmitter, not_an_event: Any
) -> None:
    with pytest.raises(TypeError, match=r"needs an event class \(a subclass of mediator\.Event"):
        publish_result(emitter, not_an_event)
    with pytest.raises(TypeError, match=r"needs an event class"):
        publish_arguments(emitter, not_an_event)


# Refused when the event cannot be built.


async def test_a_missing_field_names_function_event_class_and_field(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    class OrderService:
        @publish_result(emitter, OrderCreated)
        async def create_order(self, customer_id: str) -> dict[str, Any]:
            return {"customer_id": customer_id, "items": [], "status": "CREATED"}

    with pytest.raises(ModelBuildError) as caught:
        await OrderService().create_order("c-1")
    assert str(caught.value) == (
        "@publish_result on OrderService.create_order could not build OrderCreated: "
        "Object missing required field `order_id`"
    )
    assert list(broker.messages) == []


async def test_a_wrong_type_names_function_event_class_and_field(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    ran: list[str] = []

    @publish_arguments(emitter, Refunded)
    async def refund(order_id: str, amount: str) -> None:
        ran.append(order_id)

    with pytest.raises(ModelBuildError) as caught:
        await refund("o-1", "12")
    assert str(caught.value) == (
        "@publish_arguments on refund could not build Refunded: "
        "Expected `int`, got `str` - at `$.amount`"
    )
    assert isinstance(caught.value, TypeError)
    assert ran == [], "the body runs only once its event is published"


async def test_a_non_mapping_result_without_a_result_field_is_refused(
    emitter: EventEmitter,
) -> None:
    @publish_result(emitter, OrderCompleted)
    async def complete() -> str:
        return "done"

    with pytest.raises(
        ModelBuildError,
        match=r"@publish_result on .*complete could not build OrderCompleted: "
        r"Object missing required field `order_id`",
    ):
        await complete()


# The other two forms of event.


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParcelShipped(NotificationEvent, name="parcel.shipped"):
    parcel_id: uuid.UUID
    carrier: str
    result: str | None = None


async def test_a_dataclass_event(broker: InMemoryMessageBroker, emitter: EventEmitter) -> None:
    parcel = uuid.UUID(int=1)

    @publish_arguments(emitter, ParcelShipped, timing="both")
    async def ship(parcel_id: uuid.UUID, carrier: str, warehouse: str) -> str:
        return "tracking-1"

    await ship(parcel, "dhl", warehouse="north")

    assert payloads(broker, "parcel.shipped") == [
        {"parcel_id": parcel, "carrier": "dhl", "result": None},
        {"parcel_id": parcel, "carrier": "dhl", "result": "tracking-1"},
    ]

    @publish_result(emitter, ParcelShipped)
    async def bad() -> dict[str, Any]:
        return {"parcel_id": "not-a-uuid", "carrier": "dhl"}

    with pytest.raises(ModelBuildError, match=r"could not build ParcelShipped: .*parcel_id"):
        await bad()


async def test_a_pydantic_event(broker: InMemoryMessageBroker, emitter: EventEmitter) -> None:
    from mediator.pydantic import NotificationEvent as ModelNotificationEvent

    class InvoiceSent(ModelNotificationEvent, name="invoice.sent"):
        invoice_id: int
        total_cents: int

    @publish_result(emitter, InvoiceSent)
    async def send_invoice(invoice_id: int) -> dict[str, Any]:
        return {"invoice_id": invoice_id, "total_cents": 1999, "pdf": b"..."}

    assert await send_invoice(12) == {"invoice_id": 12, "total_cents": 1999, "pdf": b"..."}
    assert payloads(broker, "invoice.sent") == [{"invoice_id": 12, "total_cents": 1999}]

    @publish_arguments(emitter, InvoiceSent)
    async def resend(invoice_id: int, total_cents: Any) -> None:
        pass

    with pytest.raises(
        ModelBuildError,
        match=r"^@publish_arguments on resend could not build InvoiceSent: "
        r"Input should be a valid integer.* - at `\$\.total_cents`$",
    ):
        await resend(12, "lots")
    assert len(broker.messages) == 1


async def test_a_pydantic_event_that_forbids_extra_fields_gets_only_its_own(
    broker: InMemoryMessageBroker, emitter: EventEmitter
) -> None:
    import pydantic

    from mediator.pydantic import NotificationEvent as ModelNotificationEvent

    class InvoiceVoided(ModelNotificationEvent, name="invoice.voided"):
        model_config = pydantic.ConfigDict(extra="forbid")

        invoice_id: int
        reason: str = pydantic.Field(alias="why")

    class Repository:
        pass

    @publish_arguments(emitter, InvoiceVoided, timing="both")
    async def void(repository: Repository, invoice_id: int, why: str) -> bool:
        return True

    assert await void(Repository(), 7, why="duplicate") is True
    # Written by alias; once before the call, once after (the class has no `result`).
    assert payloads(broker, "invoice.voided") == [{"invoice_id": 7, "why": "duplicate"}] * 2
