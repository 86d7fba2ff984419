"""Chat templates reproduced in plain Python, for the templates most requests go through.

A jinja template walks every message of the conversation on every count; at 400 messages that
is 1.5–3 ms (13 ms for gpt-oss's), and it is the whole cost of counting a conversation whose
prefix is already tokenized (``pieces.py``). The same text built with string operations is
1.4–6× faster.

A native template stands in for one template — Qwen3's, Qwen2.5's, Llama 3.1's,
DeepSeek-V3.1's, and Qwen3-Coder's and gpt-oss's (whose headers jinja still renders) —
recognized by the SHA-256 of its source: any other text, a template edited by one character,
is rendered by jinja. It offers two things:

- rendering (``__call__``): the text of a conversation as ``conversation.prepare_chat``
  prepares it, marks included, for the sentinel method (``counter.py``), which counts what a
  layout declines and renders each such request two or more times. Kept for each template by
  measurement: a 400-message agent conversation whose pieces are known is counted that way
  in 30–50% less time than with jinja for Qwen3, Qwen2.5 and gpt-oss (whose jinja is
  quadratic), 3–17% less for Llama 3.1, DeepSeek-V3.1 and Qwen3-Coder;
- ``lay_out``: for the request shapes agent traffic has (``plain.py``), the text and where
  each block's text ends, written in one pass — no marked rendering, no search for marks —
  from the start, or from where an earlier layout of the same conversation offered to resume
  (``Resumption``), so that a grown conversation is laid out from its new messages on. The
  base (``base.py``) reads the request and starts the writer; a template writes its own
  rendering only (``NativeTemplate.write_layout``).

Each raises ``Unsupported`` for what it does not reproduce: jinja renders it, or the sentinel
method counts it. tests/tokens/test_native_templates.py holds renderings to the template's
jinja rendering, test_native_layouts.py layouts to the sentinel method's boundaries, and
test_resumed_counts.py resumed counts to counts from the start.
"""

from __future__ import annotations

import hashlib

from cachegate.tokens.native.base import NativeTemplate
from cachegate.tokens.native.deepseek import DeepSeekTemplate, render_deepseek
from cachegate.tokens.native.gpt_oss import GptOssTemplate
from cachegate.tokens.native.llama3 import Llama3Template, render_llama3
from cachegate.tokens.native.plain import LaidOutPrompt, Resumption
from cachegate.tokens.native.qwen3 import Qwen3Template, render_qwen3
from cachegate.tokens.native.qwen3_coder import Qwen3CoderTemplate
from cachegate.tokens.native.qwen25 import Qwen25Template, render_qwen25
from cachegate.tokens.template import compile_template

__all__ = [
    "DeepSeekTemplate",
    "GptOssTemplate",
    "LaidOutPrompt",
    "Llama3Template",
    "NativeTemplate",
    "Qwen3CoderTemplate",
    "Qwen3Template",
    "Qwen25Template",
    "Resumption",
    "native_template",
    "render_deepseek",
    "render_llama3",
    "render_qwen3",
    "render_qwen25",
]


def native_template(source: str) -> NativeTemplate | None:
    """The native template of ``source``, if there is one for exactly this text."""
    digest = hashlib.sha256(source.encode()).hexdigest()
    if digest == _QWEN3_SHA256:
        return Qwen3Template()
    if digest == _QWEN25_SHA256:
        return Qwen25Template()
    if digest == _LLAMA31_SHA256:
        return Llama3Template()
    if digest == _DEEPSEEK_V31_SHA256:
        return DeepSeekTemplate()
    if digest == _QWEN3_CODER_SHA256:
        return Qwen3CoderTemplate(compile_template(source))
    if digest == _GPT_OSS_SHA256:
        return GptOssTemplate(compile_template(source))
    return None


# Qwen3 (every size of the release), the template the shipped tokenizer_config.json holds.
_QWEN3_SHA256 = "87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5"
# Qwen2.5 instruct models (0.5B to 72B), as published with them.
_QWEN25_SHA256 = "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f"
# Llama 3.1 instruct models (8B, 70B, 405B), as published with them.
_LLAMA31_SHA256 = "e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65"
# DeepSeek-V3.1, as published with it.
_DEEPSEEK_V31_SHA256 = "d9f5f351b276cf9e81d009db08830db7d38e94927aecd09a7beb43e2aafee94e"
# Qwen3-Coder (30B-A3B and 480B-A35B), as published with them.
_QWEN3_CODER_SHA256 = "d287fb2edf144207f868ae1b282755dc19db2a3f1c5b3a3d57e9e5abffa98392"
# gpt-oss-20b and gpt-oss-120b, as published with the models.
_GPT_OSS_SHA256 = "a4c9919cbbd4acdd51ccffe22da049264b1b73e59055fa58811a99efbd7c8146"
