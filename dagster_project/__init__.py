"""DermaDetect curated-dataset pipeline."""
