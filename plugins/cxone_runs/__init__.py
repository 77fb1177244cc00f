"""A run's files, as the workers write them and the api-server shows them: the run folder's layout
(``layout.RunLayout``), where the runs are stored (``location.storage_base``), folder names (``segments``),
``report.json`` (``report``) and the report tab's and history page's HTML (``pages``).

This package lives on the plugins folder's path and is in ``.airflowignore`` (the plugin scan would otherwise exec
each module as a top-level module): the tasks (``include/``) and the report pages (``cxone_report_ui``) import it by
name. It imports no task code, and nothing heavier than what the api-server already loads."""
