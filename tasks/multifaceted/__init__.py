"""Multifaceted Bench (JANUS): build from five sources, import the release, judge with rubrics."""
