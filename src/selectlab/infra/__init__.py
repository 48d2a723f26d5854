"""The plumbing every stage stands on: the artifact store, paths, progress bars, child processes, JSON files, preemption."""
