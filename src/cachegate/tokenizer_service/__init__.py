"""The tokenizer service: one fleet of tokenizers counting for many gateways (SPEC §5).

A peer of ``gateway/`` over the same token counters: ``app.py`` is its ASGI app, ``cli.py`` the
``cachegate tokenizer serve`` command. Gateways reach it through ``tokens/remote.py``; the
messages both sides exchange are ``tokens/wire.py``.
"""
