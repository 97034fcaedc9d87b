"""The shop as one Service: the producer's requests and the billing consumer,
run by the ``mediator`` command.

    cd examples
    mediator run service:app                                # in-memory broker
    MEDIATOR_BROKER_URL=redis+streams://localhost:6379/0 mediator run service:app
    mediator asyncapi service:app --yaml                    # its AsyncAPI document
    mediator diagram service:app                            # its routing, in Mermaid

The broker comes from ``MEDIATOR_BROKER_URL`` (``memory://`` when it is not
set); ``mediator run --broker URL`` overrides it. The billing group reads
``shop:notification_event:Order*``.
"""

from __future__ import annotations

import logging

import brokers
from mediator import Service, ServiceStarted, ServiceStopping
from shop import billing_events, shop_requests

logger = logging.getLogger("shop")

app = Service(
    brokers.from_env(default="memory://", channel_prefix="shop"),
    name="shop",
    request_map=shop_requests(),
    event_map=billing_events(),
)
app.subscribe("{prefix}:notification_event:Order*", group="billing")


@app.event_map.bind(ServiceStarted)
async def warm_up(event: ServiceStarted) -> None:
    logger.info("%s is billing orders", event.service)


@app.event_map.bind(ServiceStopping)
async def flush(event: ServiceStopping) -> None:
    logger.info("%s stopped billing; nothing left to flush", event.service)
