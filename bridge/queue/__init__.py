"""The job queue of ``perkbridge worker``: Procrastinate on the project's PostgreSQL database.

| module | concern |
|---|---|
| `app` | the Procrastinate app: tasks, locks, retries, periodic schedules per business |
| `tasks` | the job bodies (thin adapters over ``bridge.scheduler``'s runners and the pipeline) |
| `worker` | one worker process: signals, heartbeat, stalled-job recovery |
| `ops` | list, retry, cancel, ``backfill --enqueue``, and ``queue_summary`` for status and the dashboard |

The queue's schema is bridge migration 7 (``bridge.state.schema``), on PostgreSQL only.  On
SQLite ``perkbridge schedule`` (APScheduler, one process) runs the same jobs.
"""
