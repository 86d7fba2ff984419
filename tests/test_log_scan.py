"""The log scan finds what it is for, and lets the demo banner's own key through."""

from __future__ import annotations

import logging

from log_scan import LogCollector, leaks

KEY = "cg-" + "A" * 43


def test_a_secret_or_prompt_text_in_a_log_record_is_found() -> None:
    collector = LogCollector()
    logger = logging.getLogger("cachegate.test-log-scan")
    logger.addHandler(collector)
    logger.propagate = False  # kept out of the session's own scan
    try:
        logger.warning("key %s refused", KEY)
        logger.warning("nothing to see")
        try:
            raise ValueError("rule1: answer precisely and cite section 1.")
        except ValueError:
            logger.exception("count failed")
    finally:
        logger.removeHandler(collector)
    assert [line.split(":")[1].strip() for line in leaks(collector, [])] == [
        "cachegate.test-log-scan",
        "cachegate.test-log-scan",
    ]


def test_process_output_is_scanned_except_the_demo_banners_key() -> None:
    output = [
        f"  API key  : {KEY}      (shown once; a new one is made at every demo start)",
        f'    -H "Authorization: Bearer {KEY}" -H "Content-Type: application/json" \\',
        f'  python: OpenAI(base_url="http://x/v1", api_key="{KEY}").chat.completions.create(...)',
        "2026-12-02 10:00:00,000 INFO cachegate: cachegate listening on http://127.0.0.1:1",
        f"2026-12-02 10:00:01,000 WARNING cachegate.gateway.auth: unknown key {KEY}",
    ]
    assert leaks(LogCollector(), [("cachegate serve", output)]) == [
        f"cachegate serve: 2026-12-02 10:00:01,000 WARNING cachegate.gateway.auth: unknown key {KEY}"
    ]
