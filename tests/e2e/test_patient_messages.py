"""A clinician's message reaches the patient's page, and the patient's answer reaches the care
team: real broker, real ingest and PostgreSQL, the real gateway process and its page."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from carewatch_contract import topics
from carewatch_contract.broker import BrokerEndpoint, make_client
from carewatch_contract.ids import new_uuid7
from carewatch_contract.messages import InboxMessage, encode_inbox_message
from devstack.ports import free_port
from tests.e2e.conftest import Pipeline, wait_until
from tests.e2e.test_pipeline import enroll
from tests.unit.test_patient_page import fetch, token_of

pytestmark = [pytest.mark.slow, pytest.mark.db, pytest.mark.broker]


def send_inbox_message(pipeline: Pipeline, message: InboxMessage) -> None:
    """Publish on the gateway's inbox topic, as the workspace's messaging will."""
    endpoint = BrokerEndpoint.from_url(pipeline.env["MQTT_URL"])
    client = make_client(
        endpoint,
        client_id=f"clinician-{new_uuid7()[:8]}",
        protocol=pipeline.env["MQTT_PROTOCOL"],
        persistent_session=False,
    )
    client.connect(endpoint.host, endpoint.port)
    client.loop_start()
    try:
        info = client.publish(
            topics.gateway_topic(pipeline.gateway_id, topics.INBOX),
            encode_inbox_message(message),
            qos=1,
        )
        info.wait_for_publish(timeout=10)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_message_is_delivered_read_and_answered_with_a_call_back_request(
    pipeline: Pipeline,
) -> None:
    enroll(pipeline, patients=2)
    patient = pipeline.db_values(
        "SELECT patient_id FROM gateway_patients WHERE gateway_id = %s ORDER BY patient_id",
        pipeline.gateway_id,
    )[0]
    port = free_port()
    pipeline.env["GATEWAY_PAGE_PORT"] = str(port)
    pipeline.start_ingest()
    pipeline.start(
        "gateway",
        "-m",
        "gateway_agent",
        "run",
        "--simulate",
        "--patients",
        "2",
        "--history-days",
        "0",
        "--rate",
        "30",
        "--live-readings",
        "4",
    )
    page = f"http://127.0.0.1:{port}/p/{patient}"
    wait_until(lambda: "patient page on" in pipeline.log("gateway"), 60, "the patient's page")
    wait_until(lambda: "gateway connected" in pipeline.log("gateway"), 60, "the gateway")

    message = InboxMessage(
        new_uuid7(),
        datetime.now(UTC),
        "Dr. Amara Okafor",
        "Please retake your BP tonight.",
        patient,
    )
    send_inbox_message(pipeline, message)

    def receipts() -> list[str]:
        return pipeline.db_values(
            "SELECT state FROM inbox_receipts WHERE message_id = %s ORDER BY at, state",
            message.message_id,
        )

    wait_until(lambda: receipts() == ["delivered"], 30, "the delivered receipt in the database")
    html = fetch(page).text
    assert "Please retake your BP tonight." in html
    assert "I have read this" in html

    read = fetch(f"{page}/read", form={"csrf": token_of(html), "message_id": message.message_id})
    assert read.status == 303
    wait_until(lambda: receipts() == ["delivered", "read"], 30, "the read receipt")

    answer = fetch(
        f"{page}/call-back",
        form={"csrf": token_of(html), "note": "after 5 pm", "in_reply_to": message.message_id},
    )
    assert answer.status == 303

    def requests() -> list[tuple[str, str, str]]:
        return [
            tuple(row.split("|"))
            for row in pipeline.db_values(
                "SELECT patient_id || '|' || note || '|' || in_reply_to FROM follow_up_requests"
                " WHERE status = 'open'"
            )
        ]

    wait_until(lambda: bool(requests()), 30, "the call-back request in the database")
    assert requests() == [(patient, "after 5 pm", message.message_id)]
    # Through the care team's API, and confirmed back on the patient's page.
    listed = pipeline.api.get(
        "/api/v1/follow-ups", headers={"X-CareWatch-User": "nurse.lee"}
    ).json()
    assert [(r["patient_id"], r["kind"], r["note"]) for r in listed] == [
        (patient, "call_back", "after 5 pm")
    ]
    wait_until(
        lambda: "Your care team has it" in fetch(page).text, 30, "the page to show it arrived"
    )
    # A redelivered message is neither shown nor receipted twice. A second message sent after
    # it on the same topic arrives after it, so its receipt says the redelivery was handled.
    send_inbox_message(pipeline, message)
    later = InboxMessage(new_uuid7(), datetime.now(UTC), "Nurse Lee", "See you Monday.", patient)
    send_inbox_message(pipeline, later)
    wait_until(
        lambda: (
            pipeline.db_values(
                "SELECT state FROM inbox_receipts WHERE message_id = %s", later.message_id
            )
            == ["delivered"]
        ),
        30,
        "the second message's receipt",
    )
    html = fetch(page).text
    assert html.count("Please retake your BP tonight.") == 1
    assert "See you Monday." in html
    assert receipts() == ["delivered", "read"]
    assert "Please retake" not in pipeline.log("gateway")  # no patient data in its logs
