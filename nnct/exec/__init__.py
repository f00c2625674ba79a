"""Execution, in one place: `engine` runs a plan's forward passes as nnsight interventions
(locally, or inside an nnsight session); `remote` holds everything that talks to an NDIF
server (hosts and keys, backends, request packing, retries, submitted jobs, errors).
"""
