"""Training: the corpus and its segments, the trainer, fine-tuning, copy-synthesis evaluation,
and the lock that gives a run folder to one process."""
