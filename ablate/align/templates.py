"""Chat templates: the tokenizer's own, the ChatML template that ships with ablate, or one the spec gives.

A template is Jinja that transformers renders in its sandboxed environment (nothing in a spec runs as
code). The template a stage trained with is saved with its model, so `ablate build` ships it.
"""

from __future__ import annotations

from typing import Any

from ablate.errors import AblateError
from ablate.spec.align import CHATML

# ChatML, as SmolLM2 and Qwen write it, without a default system turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTemplateError(AblateError):
    """No chat template for a tokenizer that has none: the spec must give one."""


def template_for(spec_template: str | None, tokenizer: Any, model_ref: str = "the teacher") -> str:
    """The template alignment uses: the spec's (`chatml` by name), else the tokenizer's own."""
    if spec_template == CHATML:
        return CHATML_TEMPLATE
    if spec_template:
        return spec_template
    own = getattr(tokenizer, "chat_template", None)
    if not own:
        raise ChatTemplateError(
            f"align.chat_template: the tokenizer of {model_ref} has no chat template (got none); set "
            "align.chat_template to chatml (the ChatML template that ships with ablate) or to a Jinja template"
        )
    return own if isinstance(own, str) else next(iter(own.values()))


def apply(tokenizer: Any, template: str) -> Any:
    """The tokenizer with `template` as its chat template (saved with the model it trains)."""
    tokenizer.chat_template = template
    return tokenizer
