"""Model catalog and inference backends (diffusers, ncnn, background removal)."""
