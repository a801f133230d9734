"""Training: engines (semi-supervised, selective), handlers, MLflow tracking, metrics, 2.5D samples, fine-tuning."""
