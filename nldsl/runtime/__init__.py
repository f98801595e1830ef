"""The torch runtime of compiled module specs: the frame-aware expression evaluator
(`frame.py`, `evaluate.py`) and the tensor functions of the vocabulary (`functions.py`)."""
