"""The Anthropic Messages ingress (SPEC §9), pure: requests in, chat bodies out; chat answers in, Anthropic's out.

``request`` translates a Messages request into a chat-completions body whose markers sit on the
blocks that hold their content, so ``core.markers`` and ``core.blocks`` judge and hash it as any
chat request; ``response`` and ``stream`` translate the upstream's answer back; ``errors`` gives
Anthropic's error shape.
"""
