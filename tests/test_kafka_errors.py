"""aiokafka's errors as the library's (brokers/kafka/_errors.py), without a
server: a refusal is a CredentialError, anything else Kafka or the network
raises is a BrokerUnavailableError, each naming the servers and what to
check, with aiokafka's error as the cause."""

from __future__ import annotations

import pytest
from aiokafka import errors as aiokafka_errors

from brokers.kafka._errors import kafka_errors
from mediator import BrokerUnavailableError, CredentialError, PublishError

SERVERS = ["k1:9092", "k2:9092"]


@pytest.mark.parametrize(
    "error",
    [
        aiokafka_errors.SaslAuthenticationFailed("bad password"),
        aiokafka_errors.TopicAuthorizationFailedError(),
        aiokafka_errors.GroupAuthorizationFailedError(),
        aiokafka_errors.ClusterAuthorizationFailedError(),
    ],
)
def test_a_refused_credential_or_right_is_a_credential_error(error: BaseException) -> None:
    with (
        pytest.raises(CredentialError, match=r"client_options.*ACLs") as raised,
        kafka_errors("connecting", SERVERS),
    ):
        raise error
    assert "connecting on Kafka at k1:9092,k2:9092 failed" in str(raised.value)
    assert raised.value.__cause__ is error


@pytest.mark.parametrize(
    "error",
    [
        aiokafka_errors.KafkaConnectionError("Unable to bootstrap from k1:9092"),
        aiokafka_errors.NodeNotReadyError(),
        ConnectionRefusedError("refused"),
    ],
)
def test_an_unreachable_cluster_is_unavailable_and_says_what_to_check(
    error: BaseException,
) -> None:
    with (
        pytest.raises(BrokerUnavailableError, match="check bootstrap_servers") as raised,
        kafka_errors("subscribing to 'shop:*'", SERVERS),
    ):
        raise error
    assert not isinstance(raised.value, CredentialError)
    assert "subscribing to 'shop:*' on Kafka at k1:9092,k2:9092 failed" in str(raised.value)


def test_a_timeout_reads_as_no_answer_in_time() -> None:
    with (
        pytest.raises(BrokerUnavailableError, match=r"failed: no answer in time; .*timeout="),
        kafka_errors("connecting", SERVERS),
    ):
        raise TimeoutError


def test_the_librarys_own_errors_and_other_errors_pass_through() -> None:
    refused = PublishError("the topic does not exist")
    with pytest.raises(PublishError) as raised, kafka_errors("publishing", SERVERS):
        raise refused
    assert raised.value is refused
    with pytest.raises(KeyError), kafka_errors("publishing", SERVERS):
        raise KeyError("not Kafka's")
