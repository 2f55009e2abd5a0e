"""vqtoolkit's built-in conditioning modalities (import name `vqtoolkit_plugins`).

Each module is an entry of the `vqtoolkit` entry-point group, exactly as a third-party plugin would be.
"""
