"""Fine-tuning jobs: persistence, the run of one job, and the queue."""
