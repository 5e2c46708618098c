"""``chat_template:``: the chat template the merged model's tokenizer carries (mergekit 0.1.5 rules).

* ``auto``: the most common template among the input models' tokenizers (ties: the first in
  recipe order; no template anywhere: unchanged);
* a name, ``alpaca``, ``chatml``, ``exaone``, ``llama3`` or ``mistral``: that format
  (:data:`TEMPLATES`, written here; the same renderings as mergekit's files, except that
  ``exaone`` leaves out the stray indentation mergekit's file renders);
* any other string: the Jinja template itself (it must contain ``{`` and be at least 20
  characters long).

>>> sorted(TEMPLATES)
['alpaca', 'chatml', 'exaone', 'llama3', 'mistral']
>>> resolve_template("{% for m in messages %}{{ m['content'] }}{% endfor %}", [])[:6]
'{% for'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from workbench.checkpoints import Checkpoint
from workbench.errors import WorkbenchError

__all__ = ["TEMPLATES", "resolve_template", "with_chat_template"]

_ALPACA_TURN = (
    "{%- if message['role'] == 'user' %}{{ '### Instruction:\\n' ~ message['content'] | trim }}"
    "{%- elif message['role'] == 'assistant' %}{{ '### Response:\\n' ~ message['content'] | trim }}"
    "{%- elif message['role'] == 'user_context' %}{{ '### Input:\\n' ~ message['content'] | trim }}"
    "{%- endif %}"
    "{%- if message['role'] in ['user', 'assistant', 'user_context'] and not loop.last %}{{ '\\n\\n' }}{% endif %}"
)

#: the named templates (Jinja, rendered by transformers with trim_blocks and lstrip_blocks)
TEMPLATES: dict[str, str] = {
    "alpaca": (
        "{%- set system = messages | selectattr('role', 'equalto', 'system') | list %}"
        "{{- (system | last).content | trim if system else '' }}{{ '\\n\\n' }}"
        "{%- for message in messages %}" + _ALPACA_TURN + "{%- endfor %}"
        "{%- if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{ '### Response:\\n' }}{% endif %}"
    ),
    "chatml": (
        "{%- for message in messages %}"
        "{{ '<|im_start|>' ~ message['role'] ~ '\\n' ~ message['content'] ~ '<|im_end|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "exaone": (
        "{%- for message in messages %}"
        "{%- if loop.first and message['role'] != 'system' %}{{ '[|system|][|endofturn|]\\n' }}{% endif %}"
        "{{ '[|' ~ message['role'] ~ '|]' ~ message['content'] }}"
        "{{ '\\n' if message['role'] == 'user' else '[|endofturn|]\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}"
    ),
    "llama3": (
        "{%- for message in messages %}"
        "{{ (bos_token if loop.first else '') ~ '<|start_header_id|>' ~ message['role'] ~ '<|end_header_id|>\\n\\n'"
        " ~ message['content'] | trim ~ '<|eot_id|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "mistral": (
        "{%- if messages[0]['role'] == 'system' %}"
        "{%- set system = messages[0]['content'] %}{%- set turns = messages[1:] %}"
        "{%- else %}{%- set turns = messages %}{%- endif %}"
        "{{- bos_token }}"
        "{%- for message in turns %}"
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{- raise_exception('After an optional system message, roles must alternate user/assistant') }}"
        "{%- endif %}"
        "{%- if message['role'] == 'user' %}"
        "{{- ' [INST] ' ~ (system ~ '\\n\\n' if loop.first and system is defined else '') ~ message['content'] ~ ' [/INST]' }}"
        "{%- elif message['role'] == 'assistant' %}{{- ' ' ~ message['content'] ~ eos_token }}"
        "{%- else %}{{- raise_exception('Only user and assistant roles (and a first system message) are supported') }}"
        "{%- endif %}"
        "{%- endfor %}"
    ),
}


def _template_of(tok: Any) -> str | None:
    t = getattr(tok, "chat_template", None)
    if isinstance(t, dict):
        t = t.get("default")
    return t.strip() if isinstance(t, str) and t.strip() else None


def resolve_template(setting: str, tokenizers: Sequence[Any]) -> str | None:
    """The template text for a ``chat_template`` setting (``tokenizers``: the inputs', for
    ``auto``); None when ``auto`` finds no template."""
    if setting == "auto":
        found = [t for t in map(_template_of, tokenizers) if t is not None]
        return Counter(found).most_common(1)[0][0] if found else None
    if len(setting) < 256 and "\n" not in setting and "{" not in setting:
        if setting in TEMPLATES:
            return TEMPLATES[setting]
    if len(setting) < 20 or "{" not in setting:
        raise WorkbenchError(
            f"recipe: chat_template {setting!r} is neither auto, a template name ({', '.join(TEMPLATES)}) "
            "nor a Jinja template"
        )
    return setting


def with_chat_template(
    setting: str, ckpts: dict[str, Checkpoint], reference: str, tokenizer: Any, notes: list[str]
) -> Any:
    """The output tokenizer (``tokenizer``, else the reference model's) with the template set."""
    from workbench.checkpoints import load_tokenizer

    if tokenizer is None:
        tokenizer = load_tokenizer(ckpts[reference].path)
    others = []
    if setting == "auto":
        for ref, ck in ckpts.items():
            try:
                others.append(load_tokenizer(ck.path))
            except WorkbenchError:
                notes.append(f"chat_template auto: {ref} has no loadable tokenizer")
    template = resolve_template(setting, others)
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer
