"""Turn an example into chat-template text, then into token ids with completion-only labels.

Training and evaluation build the prompt with the same function, so a model is always asked a question
exactly the way it was taught.
"""

from __future__ import annotations

from medinject.data.rows import Example

IGNORE_INDEX = -100  # label value that the causal-LM loss skips


def messages(example: Example, system: str, task_hints: dict[str, str]) -> list[dict[str, str]]:
    parts = [example.instruction.strip()]
    if example.context.strip():
        parts.append(example.context.strip())
    if hint := task_hints.get(example.type, ""):
        parts.append(hint)
    turns = [{"role": "user", "content": "\n\n".join(parts)}]
    return ([{"role": "system", "content": system}] if system else []) + turns


def prompt_text(tokenizer, example: Example, system: str, task_hints: dict[str, str]) -> str:
    """The chat-formatted prompt, ending where the assistant's answer starts."""
    return tokenizer.apply_chat_template(messages(example, system, task_hints), tokenize=False, add_generation_prompt=True)


def completion_text(tokenizer, example: Example, system: str, task_hints: dict[str, str], prompt: str) -> str:
    """What follows the prompt in the full conversation: the answer and the template's end-of-turn marks."""
    conversation = messages(example, system, task_hints) + [{"role": "assistant", "content": example.answer}]
    full = tokenizer.apply_chat_template(conversation, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently with and without the answer")
    return full[len(prompt) :]


def encode(tokenizer, example: Example, system: str, task_hints: dict[str, str], max_length: int, completion_only: bool) -> dict:
    """Token ids and labels. Too long: the answer is cut at `max_length`; a prompt that fills it is dropped."""
    prompt = prompt_text(tokenizer, example, system, task_hints)
    completion = completion_text(tokenizer, example, system, task_hints, prompt)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    keep = len(prompt_ids) < max_length
    input_ids = (prompt_ids + completion_ids)[:max_length]
    prompt_labels = [IGNORE_INDEX] * len(prompt_ids) if completion_only else list(prompt_ids)
    labels = (prompt_labels + completion_ids)[:max_length]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "keep": keep,
        "truncated": len(prompt_ids) + len(completion_ids) > max_length,
    }
