"""Streaming generation: prompt schedules and switches (live.py, schedule.py), the live page (serve)."""
