"""``runner report``: cards from the lockfile, samples fetched under a policy, one page."""
