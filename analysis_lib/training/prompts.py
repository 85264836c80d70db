"""The LLaVA-1.5 conversation layout: system text, then the image tokens, then the question."""

from __future__ import annotations

IMAGE_TOKEN = "<image>"
SYSTEM = "A chat between a user and an assistant."
END_OF_TURN = "</s>"


def prompt(question: str) -> str:
    """The text a model sees before answering (single turn), as LLaVA-1.5's `llava_v1` template."""
    return f"{SYSTEM} USER: {IMAGE_TOKEN}\n{question} ASSISTANT:"


def follow_up(question: str) -> str:
    """A later turn about the same image (no image placeholder), appended after an answer."""
    return f"USER: {question} ASSISTANT:"


def answer(text: str) -> str:
    """An answer as it follows a prompt in training text."""
    return f" {text}{END_OF_TURN}"
