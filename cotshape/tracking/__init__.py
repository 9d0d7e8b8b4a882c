"""MLflow tracking of every stage run."""
