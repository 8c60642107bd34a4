"""The operator's dashboard: server-rendered pages under ``/dashboard`` on ``perkbridge serve``
(and ``perkbridge dashboard``), over the state database and the embedded core.

- ``sessions``: the signed session cookie and its CSRF token;
- ``auth``: sign-in/out and the guards ``current_session`` and ``checked_form``;
- ``context``: ``Dashboard``, the parts every page uses;
- ``web``: the Jinja2 templates, their filters and ``render``;
- ``deadletters``: the dead-letter list, and retry/discard through a confirmation page;
- ``app``: ``mount`` puts the routers of the page modules (``overview``, …) on an app.

Templates live in ``templates/``; the one stylesheet and the one small script in ``static/``
(no CDN, no build step: it works offline).
"""
