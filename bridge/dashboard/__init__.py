"""The operator's dashboard: server-rendered pages under ``/dashboard`` on ``perkbridge serve``
(and ``perkbridge dashboard``), over the state database and the embedded core.

- ``sessions``: the signed session cookie and its CSRF token;
- ``auth``: sign-in/out and the guards ``current_session`` and ``checked_form``;
- ``context``: ``Dashboard``, the parts every page uses;
- ``web``: the Jinja2 templates, their filters and ``render``;
- ``overview``: per business, runs, lag, leases, dead letters, reconcile, write-back, request rate;
- ``runs``: the run list, a run's page with live progress, rollback and its audit pack;
- ``deadletters``: the dead-letter list, and retry/discard through a confirmation page;
- ``reconcile``: members who differ first, search, a member's page, the CSV export;
- ``app``: ``mount`` puts the routers of the page modules on an app.

Templates live in ``templates/``; the stylesheets and the small scripts in ``static/`` (no CDN, no
build step: it works offline).
"""
