"""From embeddings to places: heads, posterior, model, answer, predict, train, finetune."""
