"""vqtoolkit's built-in plugins (import name `vqtoolkit_plugins`): the conditioning modalities, and `taming`.

Each module (and the `taming` package, which adds `vqt convert`) is an entry of the `vqtoolkit` entry-point
group, exactly as a third-party plugin would be.
"""
