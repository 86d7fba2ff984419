"""The classifier's I/O (SPEC §6, §7, §11): one index lookup, counts only for what is new, commits within a
deadline, refreshes coalesced in the background — and every failure degrades instead of failing."""

from __future__ import annotations

from typing import Any

import pytest

from cachegate.core.types import CacheMiss, CacheScope, CacheTariff, Classification, MissReason, Refresh, TtlTier
from cachegate.gateway.classifier import CacheClassifier, RefreshQueue
from cachegate.tokens.base import PromptCounts

from .doubles import BlockCounter, ScriptedIndex, eventually, metric, prompt_of

SCOPE = CacheScope("prn_a", "cached-model", "blocks-v1")
OTHER_SCOPE = CacheScope("prn_b", "cached-model", "blocks-v1")
TARIFF = CacheTariff(min_prefix_tokens=512)
NOW = 1_750_000_000.0
DEGRADED = "cachegate_cache_degraded_total"
REFRESHES_DROPPED = "cachegate_cache_refreshes_dropped_total"


def marked(text: str, ttl: str = "5m") -> dict[str, Any]:
    return {"type": "text", "text": text, "cache_control": {"type": "ephemeral", "ttl": ttl}}


SYSTEM = {"role": "system", "content": [marked("You answer in one sentence.")]}  # block 0, a breakpoint


def chat(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"model": "cached-model", "messages": [SYSTEM, *messages]}


FIRST_TURN = chat({"role": "user", "content": "What is a prefix cache?"})
SECOND_TURN = chat(  # the same system block, then a conversation ending in a breakpoint at block 3
    {"role": "user", "content": "What is a prefix cache?"},
    {"role": "assistant", "content": "Reused attention state."},
    {"role": "user", "content": [marked("And its TTL?")]},
)


@pytest.fixture
def index() -> ScriptedIndex:
    return ScriptedIndex()


@pytest.fixture
def classifier(index: ScriptedIndex) -> CacheClassifier:
    return CacheClassifier(index, commit_deadline=1.0)


async def classify(
    classifier: CacheClassifier, body: dict[str, Any], counter: BlockCounter, scope: CacheScope = SCOPE
) -> Classification:
    return await classifier.classify(scope, prompt_of(body), body, TARIFF, counter, NOW)


# --- classify ----------------------------------------------------------------------------------


async def test_a_miss_creates_the_counted_prefix(classifier: CacheClassifier) -> None:
    counter = BlockCounter(tokens_per_block=600)

    result = await classify(classifier, FIRST_TURN, counter)

    assert counter.asked == [[0]]
    assert (result.stats.read, result.stats.creation_5m, result.stats.creation) == (0, 600, 600)
    assert [(entry.scope, entry.cumulative_tokens, entry.ttl) for entry in result.writes] == [
        (SCOPE, 600, TtlTier.FIVE_MINUTES)
    ]
    assert result.writes[0].expires_at == NOW + 300
    assert result.refresh is None
    assert result.counted_total == counter.cumulative(1) + 7
    assert not result.degraded


async def test_after_a_commit_the_same_prefix_is_read_without_counting(classifier: CacheClassifier) -> None:
    written = await classify(classifier, FIRST_TURN, BlockCounter())
    assert await classifier.commit(written.writes) is True
    counter = BlockCounter(fail=True)  # a pure read must not need the counter at all

    result = await classify(classifier, FIRST_TURN, counter)

    assert counter.asked == []
    assert (result.stats.read, result.stats.creation) == (600, 0)
    assert result.writes == []
    assert result.refresh == Refresh(SCOPE, written.writes[0].prefix_hash, NOW + 300)
    assert result.counted_total is None
    assert not result.degraded


class LeavingOut(BlockCounter):
    """A template that leaves out the text of some blocks (Mistral-Nemo's system prompt in an agent loop)."""

    def __init__(self, *left_out: int) -> None:
        super().__init__()
        self.left_out = frozenset(left_out)

    async def count(self, body: dict[str, Any], prompt: Any, blocks: Any) -> PromptCounts:
        counts = await super().count(body, prompt, blocks)
        cumulative = {block: count for block, count in counts.cumulative.items() if block not in self.left_out}
        return PromptCounts(cumulative, counts.total, frozenset(self.left_out & set(blocks)))


async def test_a_breakpoint_the_template_leaves_out_caches_nothing_and_the_others_work(
    classifier: CacheClassifier,
) -> None:
    result = await classify(classifier, SECOND_TURN, LeavingOut(0))

    assert not result.degraded
    assert (result.stats.read, result.stats.creation) == (0, BlockCounter().cumulative(3))
    assert [entry.cumulative_tokens for entry in result.writes] == [BlockCounter().cumulative(3)]


async def test_a_match_at_a_block_the_template_now_leaves_out_is_not_read(classifier: CacheClassifier) -> None:
    await classifier.commit((await classify(classifier, FIRST_TURN, BlockCounter())).writes)

    result = await classify(classifier, SECOND_TURN, LeavingOut(0))

    assert result.stats.read == 0
    assert [entry.cumulative_tokens for entry in result.writes] == [BlockCounter().cumulative(3)]


async def test_a_partial_hit_counts_only_the_breakpoints_past_it(classifier: CacheClassifier) -> None:
    await classifier.commit((await classify(classifier, FIRST_TURN, BlockCounter())).writes)
    counter = BlockCounter(tokens_per_block=600)

    result = await classify(classifier, SECOND_TURN, counter)

    assert counter.asked == [[0, 3]]  # the new breakpoint, and the hit to check it against this rendering
    assert (result.stats.read, result.stats.creation_5m) == (600, counter.cumulative(3) - 600)
    assert [entry.cumulative_tokens for entry in result.writes] == [counter.cumulative(3)]


class RewritingCounter(BlockCounter):
    """A template that, once later turns arrive, renders the blocks from ``from_block`` on shorter
    (as Qwen3 drops the reasoning of turns before the last user query)."""

    def __init__(self, from_block: int, dropped: int) -> None:
        super().__init__()
        self.from_block = from_block
        self.dropped = dropped

    def cumulative(self, block: int) -> int:
        return super().cumulative(block) - (self.dropped if block >= self.from_block else 0)


THIRD_TURN = chat(
    *SECOND_TURN["messages"][1:],
    {"role": "assistant", "content": "Five minutes by default."},
    {"role": "user", "content": [marked("And an hour?")]},  # block 5
)


async def test_a_match_the_template_now_renders_differently_is_not_read(classifier: CacheClassifier) -> None:
    await classifier.commit((await classify(classifier, SECOND_TURN, BlockCounter())).writes)  # blocks 0 and 3
    rewriting = RewritingCounter(from_block=2, dropped=100)
    stale_before = metric("cachegate_cache_stale_hits_total")

    result = await classify(classifier, THIRD_TURN, rewriting)

    # Block 3 was written holding 2,400 tokens; this rendering gives it 2,300: stale. Block 0 still holds.
    assert result.stats.read == 600
    assert result.stats.creation_5m == rewriting.cumulative(5) - 600
    assert [entry.cumulative_tokens for entry in result.writes] == [rewriting.cumulative(3), rewriting.cumulative(5)]
    assert result.refresh == Refresh(SCOPE, prompt_of(THIRD_TURN).prefix_hashes[0], NOW + 300)
    assert metric("cachegate_cache_stale_hits_total") - stale_before == 1


async def test_when_no_match_holds_nothing_is_read(classifier: CacheClassifier) -> None:
    await classifier.commit((await classify(classifier, SECOND_TURN, BlockCounter())).writes)

    result = await classify(classifier, THIRD_TURN, RewritingCounter(from_block=0, dropped=1))

    assert result.stats.read == 0
    assert result.refresh is None
    assert [entry.cumulative_tokens for entry in result.writes] == [599, 2399, 3599]


async def test_what_one_principal_wrote_is_never_read_by_another(classifier: CacheClassifier) -> None:
    await classifier.commit((await classify(classifier, FIRST_TURN, BlockCounter())).writes)

    result = await classify(classifier, FIRST_TURN, BlockCounter(), scope=OTHER_SCOPE)

    assert (result.stats.read, result.stats.creation) == (0, 600)


async def test_an_index_outage_degrades_to_zeros(classifier: CacheClassifier, index: ScriptedIndex) -> None:
    index.down.add("lookup")
    counter = BlockCounter()
    degraded_before = metric(DEGRADED, reason="index")

    result = await classify(classifier, FIRST_TURN, counter)

    assert result == Classification.degraded_zeros()
    assert counter.asked == []
    assert metric(DEGRADED, reason="index") - degraded_before == 1


async def test_a_token_count_failure_degrades_to_zeros(classifier: CacheClassifier) -> None:
    degraded_before = metric(DEGRADED, reason="token_counter")

    result = await classify(classifier, FIRST_TURN, BlockCounter(fail=True))

    assert result == Classification.degraded_zeros()
    assert metric(DEGRADED, reason="token_counter") - degraded_before == 1


async def test_no_breakpoints_is_zeros_without_asking_the_index(
    classifier: CacheClassifier, index: ScriptedIndex
) -> None:
    body = {"model": "cached-model", "messages": [{"role": "user", "content": "No markers here."}]}
    index.down.add("lookup")

    result = await classify(classifier, body, BlockCounter())

    assert result == Classification()
    assert index.lookups == 0


# --- commit ------------------------------------------------------------------------------------


async def test_commit_of_nothing_succeeds_without_writing(classifier: CacheClassifier, index: ScriptedIndex) -> None:
    index.down.add("write")

    assert await classifier.commit([]) is True


async def test_commit_reports_an_index_outage(classifier: CacheClassifier, index: ScriptedIndex) -> None:
    writes = (await classify(classifier, FIRST_TURN, BlockCounter())).writes
    index.down.add("write")

    assert await classifier.commit(writes) is False


async def test_commit_gives_up_at_its_deadline(index: ScriptedIndex) -> None:
    classifier = CacheClassifier(index, commit_deadline=0.01)
    writes = (await classify(classifier, FIRST_TURN, BlockCounter())).writes
    index.stall_writes = True

    assert await classifier.commit(writes) is False

    index.stall_writes = False
    assert (await classify(classifier, FIRST_TURN, BlockCounter())).stats.read == 0  # nothing landed


# --- RefreshQueue ------------------------------------------------------------------------------


def refresh(expires_at: float, prefix_hash: bytes = b"prefix-1", scope: CacheScope = SCOPE) -> Refresh:
    return Refresh(scope, prefix_hash, expires_at)


async def test_refreshes_of_one_entry_coalesce_into_the_latest_expiry(index: ScriptedIndex) -> None:
    queue = RefreshQueue(index, interval=60.0)
    for expires_at in (NOW + 300, NOW + 900, NOW + 600):
        queue.add(refresh(expires_at))
    queue.add(refresh(NOW + 300, scope=OTHER_SCOPE))  # another scope's entry of the same hash stays apart
    queue.add(refresh(NOW + 300, prefix_hash=b"prefix-2"))

    await queue.flush()

    [batch] = index.refresh_batches
    assert len(batch) == 3
    assert set(batch) == {
        refresh(NOW + 900),
        refresh(NOW + 300, scope=OTHER_SCOPE),
        refresh(NOW + 300, prefix_hash=b"prefix-2"),
    }


async def test_a_flush_with_nothing_pending_does_not_call_the_index(index: ScriptedIndex) -> None:
    queue = RefreshQueue(index, interval=60.0)
    queue.add(refresh(NOW + 300))
    await queue.flush()

    await queue.flush()

    assert len(index.refresh_batches) == 1


async def test_new_entries_past_max_pending_are_dropped_and_counted(index: ScriptedIndex) -> None:
    queue = RefreshQueue(index, interval=60.0, max_pending=2)
    dropped_before = metric(REFRESHES_DROPPED)

    queue.add(refresh(NOW + 300, prefix_hash=b"prefix-1"))
    queue.add(refresh(NOW + 300, prefix_hash=b"prefix-2"))
    queue.add(refresh(NOW + 300, prefix_hash=b"prefix-3"))
    queue.add(refresh(NOW + 600, prefix_hash=b"prefix-1"))  # a known entry still moves forward

    assert metric(REFRESHES_DROPPED) - dropped_before == 1
    await queue.flush()
    [batch] = index.refresh_batches
    assert len(batch) == 2
    assert set(batch) == {refresh(NOW + 600, prefix_hash=b"prefix-1"), refresh(NOW + 300, prefix_hash=b"prefix-2")}


async def test_an_index_outage_on_flush_loses_the_batch_quietly(index: ScriptedIndex) -> None:
    queue = RefreshQueue(index, interval=60.0)
    queue.add(refresh(NOW + 300, prefix_hash=b"prefix-1"))
    queue.add(refresh(NOW + 300, prefix_hash=b"prefix-2"))
    index.down.add("refresh")
    dropped_before = metric(REFRESHES_DROPPED)

    await queue.flush()

    assert metric(REFRESHES_DROPPED) - dropped_before == 2
    index.down.clear()
    await queue.flush()
    assert len(index.refresh_batches) == 1  # the lost batch is not retried


async def test_the_background_task_flushes_and_stop_flushes_the_rest(index: ScriptedIndex) -> None:
    queue = RefreshQueue(index, interval=0.005)
    queue.start()
    queue.add(refresh(NOW + 300, prefix_hash=b"prefix-1"))
    await eventually(lambda: len(index.refresh_batches) == 1)

    queue.add(refresh(NOW + 300, prefix_hash=b"prefix-2"))
    await queue.stop()

    assert [batch[0].prefix_hash for batch in index.refresh_batches] == [b"prefix-1", b"prefix-2"]


async def test_the_background_task_survives_an_unexpected_index_error(index: ScriptedIndex) -> None:
    queue = RefreshQueue(index, interval=0.005)
    index.broken.add("refresh")
    queue.start()
    try:
        queue.add(refresh(NOW + 300, prefix_hash=b"prefix-1"))
        await eventually(lambda: len(index.refresh_batches) == 1)
        index.broken.clear()
        queue.add(refresh(NOW + 300, prefix_hash=b"prefix-2"))
        await eventually(lambda: len(index.refresh_batches) == 2, timeout=0.5)
    finally:
        await queue.stop()


# --- the diagnosis of a miss (SPEC §14) ----------------------------------------------------------


async def test_a_hit_asks_the_index_nothing_more(classifier: CacheClassifier, index: ScriptedIndex) -> None:
    written = await classify(classifier, FIRST_TURN, BlockCounter())
    assert written.miss == CacheMiss(MissReason.FIRST_WRITE) and index.recalls == 1
    await classifier.commit(written.writes, written.trails)

    result = await classify(classifier, FIRST_TURN, BlockCounter())

    assert result.miss is None
    assert index.recalls == 1  # no recall on a hit
    assert index.lookups == 2


async def test_a_grown_conversation_recalls_once_and_writes_its_new_part_first(
    classifier: CacheClassifier, index: ScriptedIndex
) -> None:
    written = await classify(classifier, FIRST_TURN, BlockCounter())
    await classifier.commit(written.writes, written.trails)

    result = await classify(classifier, SECOND_TURN, BlockCounter())

    assert result.stats.read == 600
    assert result.miss == CacheMiss(MissReason.FIRST_WRITE)
    assert index.recalls == 2
    assert {trail.key[:7] for trail in result.trails} == {b"anchor:", b"latest"}


async def test_an_edited_message_is_a_changed_prefix(classifier: CacheClassifier) -> None:
    written = await classify(classifier, SECOND_TURN, BlockCounter())
    await classifier.commit(written.writes, written.trails)
    edited = chat(
        {"role": "user", "content": "What is a prefix cache?"},
        {"role": "assistant", "content": "Reused key-value state."},
        {"role": "user", "content": [marked("And its TTL?")]},
    )

    result = await classify(classifier, edited, BlockCounter())

    assert result.stats.read == 600  # the system block still reads
    assert result.miss == CacheMiss(MissReason.PREFIX_CHANGED, 2)


async def test_an_expired_entry_is_told_from_one_never_written(classifier: CacheClassifier) -> None:
    written = await classify(classifier, FIRST_TURN, BlockCounter())
    await classifier.commit(written.writes, written.trails)

    later = await classifier.classify(SCOPE, prompt_of(FIRST_TURN), FIRST_TURN, TARIFF, BlockCounter(), NOW + 301)
    elsewhere = await classify(classifier, FIRST_TURN, BlockCounter(), scope=OTHER_SCOPE)

    assert later.miss == CacheMiss(MissReason.EXPIRED)
    assert elsewhere.miss == CacheMiss(MissReason.FIRST_WRITE)  # another principal learns nothing


async def test_a_recall_that_fails_leaves_the_miss_undiagnosed_and_the_request_cached(
    classifier: CacheClassifier, index: ScriptedIndex
) -> None:
    index.down.add("recall")

    result = await classify(classifier, FIRST_TURN, BlockCounter())

    assert result.miss is None and result.undiagnosed
    assert not result.degraded and result.stats.creation == 600


async def test_below_the_floor_and_degraded_say_so(classifier: CacheClassifier, index: ScriptedIndex) -> None:
    short = await classifier.classify(
        SCOPE, prompt_of(FIRST_TURN), FIRST_TURN, CacheTariff(min_prefix_tokens=10**6), BlockCounter(), NOW
    )
    index.down.add("lookup")
    down = await classify(classifier, FIRST_TURN, BlockCounter())

    assert short.miss == CacheMiss(MissReason.BELOW_FLOOR)
    assert down.miss == CacheMiss(MissReason.DEGRADED)
