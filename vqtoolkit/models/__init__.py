"""Neural network modules: VQGAN, quantizers, discriminator, transformer."""
