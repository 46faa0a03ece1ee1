"""What runner keeps: the lockfile (with its journal and session) and job fingerprints."""
