"""The plumbing every layer uses and that knows nothing of physics: errors, input safety, the run log and
threads, the output-folder lock and atomic writes, optional extras, provenance, safe torch files, YAML config files
and their dumps, the shared command-line arguments and schedules. Imports nothing of phasestem's outside ``base``."""
