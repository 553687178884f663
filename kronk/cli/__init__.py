"""The ``kronk`` command line (click). Entry point: :func:`kronk.cli.main.main`.

Modules: ``main`` (the command tree), ``server`` + ``runner`` (start/stop/status/logs and the
foreground server), ``models`` + ``pull`` + ``ops`` (the model store, through the server or
in-process), ``catalog``, ``chat``, ``config``; ``common`` generates the settings flags from
:class:`kronk.settings.Settings`, so a flag, its ``KRONK_*`` variable and its config key agree.
"""
