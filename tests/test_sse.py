"""The one SSE decoder against the examples of the SSE standard (WHATWG HTML, "Server-sent events")."""

from __future__ import annotations

import pytest

from agentgw.sse import Event, SseDecoder, decode_all, is_event_stream, media_type


def fed_in_pieces(stream: bytes, size: int) -> list[Event]:
    decoder = SseDecoder()
    events: list[Event] = []
    for start in range(0, len(stream), size):
        events += decoder.feed(stream[start : start + size])
    return events


def test_standard_example_stock_ticker_joins_data_lines() -> None:
    events = decode_all(b"data: YHOO\ndata: +2\ndata: 10\n\n")
    assert [e.data for e in events] == ["YHOO\n+2\n10"]


def test_standard_example_comments_ids_and_one_leading_space() -> None:
    stream = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"
    decoder = SseDecoder()
    events = decoder.feed(stream)
    assert [(e.data, e.id) for e in events] == [("first event", "1"), ("second event", ""), (" third event", None)]
    assert decoder.last_event_id == ""  # the bare `id` line reset it


def test_standard_example_empty_data_and_the_unfinished_last_block() -> None:
    events = decode_all(b"data\n\ndata\ndata\n\ndata:")
    assert [e.data for e in events] == ["", "\n"]


def test_standard_example_the_space_after_the_colon_is_optional() -> None:
    assert [e.data for e in decode_all(b"data:test\n\ndata: test\n\n")] == ["test", "test"]


@pytest.mark.parametrize("end", [b"\r\n", b"\n", b"\r"], ids=["crlf", "lf", "cr"])
def test_every_line_ending_of_the_standard(end: bytes) -> None:
    stream = b"event: message" + end + b"data: {}" + end + b"id: 7" + end + end
    assert [(e.event, e.data, e.id) for e in decode_all(stream)] == [("message", "{}", "7")]


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_pieces_of_any_size_give_the_same_events(size: int) -> None:
    stream = "\ufeffevent: note\r\ndata: é1\r\rdata: 2\r\n\r\n: c\ndata: 3\n\n".encode()
    whole = decode_all(stream)
    assert [(e.event, e.data) for e in whole] == [("note", "é1"), ("message", "2"), ("message", "3")]
    assert fed_in_pieces(stream, size) == whole


def test_a_crlf_split_across_pieces_is_one_line_end() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert [e.data for e in decoder.feed(b"\n\r\n")] == ["a"]


def test_unknown_fields_and_bad_retry_are_ignored() -> None:
    (event,) = decode_all(b"foo: bar\nretry: 1x\ndata: d\nretry: 250\n\n")
    assert (event.data, event.retry) == ("d", 250)


def test_an_id_with_nul_is_ignored() -> None:
    decoder = SseDecoder()
    (event,) = decoder.feed(b"id: a\x00b\ndata: d\n\n")
    assert event.id is None and decoder.last_event_id == ""


def test_encode_round_trips() -> None:
    event = Event("line1\nline2", "message", "9", None)
    assert decode_all(event.encode()) == [event]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text/event-stream", True),
        ("Text/Event-Stream; charset=utf-8", True),
        ("TEXT/EVENT-STREAM", True),
        ("text/event-streamx", False),
        ("application/json", False),
        (None, False),
    ],
)
def test_media_types_compare_case_insensitively_without_parameters(value: str | None, expected: bool) -> None:
    assert is_event_stream(value) is expected
    if value:
        assert media_type(value) == media_type(value.upper())
