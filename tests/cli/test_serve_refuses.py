"""Start-up failures that do stop ``cachegate serve`` print one line naming the setting, not a traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .gateway_process import cachegate


def test_an_unreadable_tokenizer_folder_is_one_line_naming_the_tokenizer(tmp_path: Path) -> None:
    config = tmp_path / "cachegate.yaml"
    config.write_text(
        f"""
data_dir: {tmp_path / "data"}
tokenizers:
  qwen3: {{kind: builtin, name: qwen3}}
  mine: {{kind: hf, path: {tmp_path / "missing"}}}
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEGATE_")}
    done = subprocess.run(
        cachegate("-c", str(config), "serve", "--port", "0"), env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"cachegate: tokenizers.mine: cannot read {tmp_path / 'missing' / 'tokenizer.json'}: No such file or directory"
    ]
