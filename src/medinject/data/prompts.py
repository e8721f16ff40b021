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


_SENTINEL = "\x00medinject-answer\x00"


def answer_frame(tokenizer, system: str, task_hints: dict[str, str]) -> tuple[str, str]:
    """(text before, text after) the answer in the assistant turn, found once by rendering a probe
    conversation, so each example needs one template rendering instead of two. Checked to agree
    with `completion_text` on the probe."""
    probe = Example(id="", origin="native", type="oeq", instruction="?", context="", answer=_SENTINEL, options=(), split="", file="", line=0)
    prompt = prompt_text(tokenizer, probe, system, task_hints)
    before, sentinel, after = completion_text(tokenizer, probe, system, task_hints, prompt).partition(_SENTINEL)
    if not sentinel:
        raise ValueError("the chat template does not render the assistant's answer verbatim")
    return before, after
