"""Interventions as data: what is corrupted, what is measured, which cells run where.

`corruption` turns noise on a span or a counterfactual prompt into a `RunInput`, the only
thing the engine sees of a corruption; `metrics` names what a forward reports and every
number derived from it (one entry per metric); `components` says what a cell restores (one
entry per component); `plan` lays out the cells of an example,
their batches and their writes, pure data that the engine (or a remote session) executes.
"""
