"""From manifest to lockfile: the pipeline that prepares a plan, the pure planner, apply,
refresh, trust changes and upload preparation."""
