"""What a run writes for people: the console, W&B tables and summary, the selection report, subset exports,
and the statistics (bootstrap intervals, paired differences) behind every number it prints."""
