"""Built-in chat templates, for GGUFs that carry none (Jinja2, Hugging Face conventions).

A catalog entry or a model config names one of these (``chat_template: gemma``)
or gives Jinja source directly. Templates receive ``messages``, ``bos_token``,
``eos_token``, ``add_generation_prompt`` and ``tools``.
"""

from __future__ import annotations

GEMMA = (
    "{{ bos_token }}"
    "{%- set ns = namespace(system='', first=true) -%}"
    "{%- for m in messages if m['role'] == 'system' -%}"
    "{%- set ns.system = ns.system + m['content'] + '\n\n' -%}"
    "{%- endfor -%}"
    "{%- for m in messages if m['role'] != 'system' -%}"
    "{%- set role = 'model' if m['role'] == 'assistant' else 'user' -%}"
    "<start_of_turn>{{ role }}\n"
    "{% if ns.first and role == 'user' %}{{ ns.system }}{% endif %}"
    "{% set ns.first = false %}"
    "{% if m['role'] == 'tool' %}Tool result: {% endif %}"
    "{{ m['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

CHATML = (
    "{%- for m in messages -%}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAMA3 = (
    "{{ bos_token }}"
    "{%- for m in messages -%}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

BUILTIN_TEMPLATES: dict[str, str] = {"gemma": GEMMA, "chatml": CHATML, "llama3": LLAMA3}


def resolve_template(name_or_source: str | None) -> str | None:
    """A built-in template's source by name, or the given Jinja source as it is."""
    if name_or_source is None:
        return None
    return BUILTIN_TEMPLATES.get(name_or_source.strip(), name_or_source)
