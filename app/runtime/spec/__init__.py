"""Speculative decoding for the llama.cpp token loop (issue 18).

The loop (`backends.llama_loop`) already verifies a guess in one batch and keeps the longest prefix
the target agrees with; this package makes the guesses and decides how many to make:

- `lookup`: n-gram prompt lookup over the conversation (and any attached text): no second model;
- `draft_model`: a smaller library model with the same vocabulary (checked) in a second llama.cpp
  context;
- `adaptive`: wraps either, chooses k before every step from the running acceptance rate and the
  measured verify-cost curve (`planner.speculation`), and switches guessing off while it would lose;
- `costs`: measures the verify-cost curve (n tokens in one batch) at first use into the store;
- `rejection`: the standard speculative-sampling rule, for drafters that sample;
- `setup`: what the engine calls: a chat's ``speculate`` mode to a drafter, or None;
- `bench`: `hearth bench spec`.

Nothing here imports PySide6 or the server; llama_cpp is imported only where a model is loaded.
"""
