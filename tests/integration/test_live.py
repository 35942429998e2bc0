"""`make live`: skipped without a key; with one, its requests go through the relay's code to whatever
API the SDK is pointed at (here the emulator, standing in for the real one)."""

from __future__ import annotations

import pytest
from relay_local import live

pytestmark = pytest.mark.integration


def test_without_a_key_it_says_it_is_skipped_and_sends_nothing(monkeypatch, capsys, emulator):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert live.main([]) == 0
    assert capsys.readouterr().out.strip() == live.SKIPPED
    assert sum(emulator.calls.values()) == 0


def test_with_a_key_it_answers_each_kind_of_call_and_prints_the_cost(monkeypatch, capsys, emulator):
    # Given: a key, and the SDK pointed at the API (the emulator here)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator.url)

    # When: the live run goes
    assert live.run("claude-haiku-4-5", timeout=120, wait_cap=0.05) == 0

    # Then: a count, two batches (one under 2023-06-01) and a realtime call were made, and costs printed
    out = capsys.readouterr().out
    assert "count_tokens:" in out and "total:" in out
    for rid, route in (("live-batch", "batch"), ("live-temperature", "batch"), ("live-realtime", "realtime")):
        assert any(line.split()[:3] == [rid, route, "succeeded"] for line in out.splitlines()), out
    assert sorted(emulator.batch_version(b)[0] for b in emulator.batch_ids()) == ["2023-06-01", "2026-10-21"]
    assert len(emulator.messages_created) == 1
