"""Exactness of cachegate's chat-template rendering against Hugging Face transformers."""
