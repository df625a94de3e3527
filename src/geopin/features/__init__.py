"""Turning photos into embeddings: backbones and the embed stage."""
