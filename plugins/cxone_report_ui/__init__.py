"""The CXone report tab and import history page: a FastAPI app mounted on the api-server by
``plugins/cxone_report_plugin.py`` (this package is in ``.airflowignore``, so the plugin scan does not exec it)."""
