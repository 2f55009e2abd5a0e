"""Training loops: shared machinery (loop.py) and the two stages."""
