"""Token counting (SPEC §5): exact counts from the model's own tokenizer and chat template."""

from cachegate.tokens.base import PromptCounts, TokenCounter, TokenCountError, TokenizerLoadError
from cachegate.tokens.counter import ChatTokenCounter, CountOptions, MarkedRendering
from cachegate.tokens.memo import MemoizedCounter
from cachegate.tokens.registry import BuiltinTokenizerSpec, HfTokenizerSpec, TokenizerSpec, build_counter, load_qwen3

__all__ = [
    "BuiltinTokenizerSpec",
    "ChatTokenCounter",
    "CountOptions",
    "HfTokenizerSpec",
    "MarkedRendering",
    "MemoizedCounter",
    "PromptCounts",
    "TokenCountError",
    "TokenCounter",
    "TokenizerLoadError",
    "TokenizerSpec",
    "build_counter",
    "load_qwen3",
]
