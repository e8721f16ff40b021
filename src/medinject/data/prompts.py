"""Turn an example into chat-template text, then into token ids with completion-only labels.

Training and evaluation build the prompt with the same function, so a model is always asked a question
exactly the way it was taught.

The conversation starts from the item's own turns: a chat item's messages (its assistant turns
removed), or for a schema row one user turn, the instruction then the context (options included)
separated by a blank line. The lenient protocol adds the configured system prompt (unless the item has
its own) and the task hint at the end of the last user turn; with no system prompt and no hint (the
strict protocol, `experiment=paper`) the item's own turns are the whole prompt.
"""

from __future__ import annotations

import json

from medinject.data.rows import Example

IGNORE_INDEX = -100  # label value that the causal-LM loss skips


def own_messages(example: Example) -> list[dict[str, str]]:
    """The item's own prompt turns: a chat item's messages, or the schema row as one user turn."""
    if example.messages:
        return json.loads(example.messages)
    parts = [example.instruction.strip()]
    if example.context.strip():
        parts.append(example.context.strip())
    return [{"role": "user", "content": "\n\n".join(parts)}]


def messages(example: Example, system: str, task_hints: dict[str, str]) -> list[dict[str, str]]:
    turns = own_messages(example)
    if hint := task_hints.get(example.type, ""):
        last_user = max((i for i, t in enumerate(turns) if t["role"] == "user"), default=None)
        if last_user is None:
            turns.append({"role": "user", "content": hint})
        else:
            turns[last_user] = {**turns[last_user], "content": f"{turns[last_user]['content'].strip()}\n\n{hint}"}
    if system and not any(t["role"] == "system" for t in turns):
        turns = [{"role": "system", "content": system}] + turns
    return turns


def question_text(example: Example) -> str:
    """What the item asks, as a judge reads it: its user turns (a schema row: instruction, context)."""
    return "\n\n".join(t["content"].strip() for t in own_messages(example) if t["role"] == "user")


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
