"""Inputs: what a researcher brings, up to the token positions a run corrupts.

`records` reads fact records (docs/method.md's schema) line by line, each bad line reported
with its file, line and field; `pairs` reads prompt pairs, or makes them from records by
substituting a subject or an object; `prompts` turns a record into the examples of an
experiment (the prompt text, the characters of each mention, the answers); `spans` maps
characters to tokens and labels each token's segment; `cases` makes an example a `Case`,
everything a run needs of it. Nothing here runs a model (only its tokenizer).
"""
