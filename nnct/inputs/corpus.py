"""Text for ROME's key statistics (the covariance C of docs/method.md, "ROME editing").

ROME estimates C over Wikipedia; nnct's machines reach package registries only, so the text
is one every Python installation ships: CPython's documentation topics (`pydoc_data`, the
reference manual's sections that `help()` shows: about 465,000 characters of English prose
and code), joined in a fixed order and cut into chunks of the model's tokens.
"""

from __future__ import annotations

NAME = "cpython-pydoc-topics"


def chunks(tokenizer, tokens: int, length: int = 128) -> list[list[int]]:
    """The first `tokens` tokens of the corpus (all of it when it has fewer), in chunks of
    `length` token ids."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    return [ids[i:i + length] for i in range(0, len(ids), length)]
