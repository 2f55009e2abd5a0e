"""Training: the shared loop (loop.py, with runtime.py, order.py, state.py, run_dir.py) and the two stages."""
